"""The GRPO math, checked exactly (float64, full enumeration): Prop 4.1 for categorical and Plackett-Luce
policies, the k3 facts, masking, the mu = 1 gradient, and rank-independent aggregation."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agenticrec.grpo import advantage_stats, group_advantages, grpo_loss, keep_group, kl_penalty
from agenticrec.reward import reward

F64 = torch.float64  # every tensor here is float64: the checks are exact


def expected_estimator(logp_outcomes: torch.Tensor, rewards: torch.Tensor, G: int, kind: str, theta,
                       drop_all_negative: bool = False, drop_all_equal: bool = False,
                       lengths: torch.Tensor | None = None) -> torch.Tensor:
    """E over all G-tuples of outcomes of (1/G) sum_g A_g w_g grad log pi(y_g), by enumeration, conditioned on the
    group being kept by ``keep_group`` (dynamic sampling refills dropped groups, so a trained group is such a draw).

    logp_outcomes [M] (differentiable in theta), rewards [M]. w_g = 1, or with ``lengths`` [M] (token_mean) G / the
    group's total sampled tokens. The estimator is linear in grad log pi, so its expectation is the gradient of
    sum_tuples P(tuple) (1/G) sum_g A_g w_g log pi(y_g) with P, A and w held fixed, divided by P(kept).
    """
    M = len(rewards)
    tuples = torch.tensor(list(itertools.product(range(M), repeat=G)))  # [M^G, G]
    probs = logp_outcomes.detach().exp()[tuples].prod(dim=1)  # [M^G]
    keep = keep_group(rewards[tuples], drop_all_negative, drop_all_equal).to(F64)
    weights = torch.ones(1, dtype=F64) if lengths is None else G / lengths[tuples].sum(dim=1, keepdim=True)
    advantages = group_advantages(rewards[tuples], kind) * weights  # our implementation, one row per tuple
    surrogate = (keep[:, None] * probs[:, None] * advantages * logp_outcomes[tuples]).sum() / G
    return torch.autograd.grad(surrogate, theta, retain_graph=True)[0] / (keep * probs).sum()


def exact_gradient(logp_outcomes, rewards, theta) -> torch.Tensor:
    return torch.autograd.grad((logp_outcomes.exp() * rewards).sum(), theta, retain_graph=True)[0]


def cosine(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


@settings(max_examples=30, deadline=None)
@given(K=st.integers(2, 4), G=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_prop_4_1_categorical_policy(K, G, seed):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=F64).requires_grad_()
    rewards = torch.randn(K, generator=g, dtype=F64)
    logp = theta.log_softmax(0)
    truth = exact_gradient(logp, rewards, theta)
    assert torch.allclose(expected_estimator(logp, rewards, G, "mean", theta), (G - 1) / G * truth, atol=1e-12)
    assert torch.allclose(expected_estimator(logp, rewards, G, "rloo", theta), truth, atol=1e-12)


def test_std_normalised_advantages_are_not_proportional_to_the_gradient():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        theta = torch.randn(3, generator=g, dtype=F64).requires_grad_()
        rewards = torch.randn(3, generator=g, dtype=F64)
        logp = theta.log_softmax(0)
        est = expected_estimator(logp, rewards, 3, "std", theta)
        truth = exact_gradient(logp, rewards, theta)
        if cosine(est, truth) < 1 - 1e-4:
            return  # a counterexample: biased, and not even parallel
    pytest.fail("no counterexample found")


def plackett_luce_logps(theta: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every permutation of the candidates and its log-probability under Plackett-Luce with scores theta."""
    perms = list(itertools.permutations(range(len(theta))))
    logps = []
    for perm in perms:
        remaining = list(perm)
        total = 0.0
        for item in perm:
            total = total + theta[item] - torch.logsumexp(theta[remaining], 0)
            remaining.remove(item)
        logps.append(total)
    return perms, torch.stack(logps)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(3, 4), G=st.integers(2, 3), target=st.integers(0, 2), tools=st.integers(0, 1),
       seed=st.integers(0, 10_000))
def test_prop_4_1_plackett_luce_ranking_policy_with_the_paper_reward(n, G, target, tools, seed):
    theta = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64).requires_grad_()
    perms, logp = plackett_luce_logps(theta)
    # the paper's reward of each full ranking (K = 2 so that some rankings miss the target: -0.5)
    rewards = torch.tensor([reward(perm, target, tools, cfg=_cfg(k=2)) for perm in perms], dtype=F64)
    assert math.isclose(float(logp.detach().exp().sum()), 1.0)
    truth = exact_gradient(logp, rewards, theta)
    assert torch.allclose(expected_estimator(logp, rewards, G, "mean", theta), (G - 1) / G * truth, atol=1e-12)
    assert torch.allclose(expected_estimator(logp, rewards, G, "rloo", theta), truth, atol=1e-12)


def _cfg(**kwargs):
    from agenticrec.reward import RewardConfig
    return RewardConfig(**kwargs)


@settings(max_examples=50, deadline=None)
@given(K=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_k3_is_unbiased_for_kl_and_its_gradient_is_the_reverse_kl_gradient(K, seed):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=F64).requires_grad_()
    ref = torch.randn(K, generator=g, dtype=F64).log_softmax(0)
    logp = theta.log_softmax(0)
    pi = logp.exp()
    k3 = kl_penalty(logp, ref, "k3")  # one value per possible sample
    kl_pi_ref = (pi * (logp - ref)).sum()
    assert torch.allclose((pi.detach() * k3).sum(), kl_pi_ref, atol=1e-12)  # E[k3] = KL(pi || ref)
    expected_grad = torch.autograd.grad((pi.detach() * k3).sum(), theta, retain_graph=True)[0]  # E[grad k3]
    kl_ref_pi = (ref.exp() * (ref - logp)).sum()
    assert torch.allclose(expected_grad, torch.autograd.grad(kl_ref_pi, theta, retain_graph=True)[0], atol=1e-12)
    k2_grad = torch.autograd.grad((pi.detach() * kl_penalty(logp, ref, "k2")).sum(), theta, retain_graph=True)[0]
    assert torch.allclose(k2_grad, torch.autograd.grad((pi * (logp - ref)).sum(), theta)[0], atol=1e-12)


def test_k3_gradient_is_not_the_forward_kl_gradient():
    # the two gradients agree to first order when pi ~ ref (hypothesis found such a draw), so show the difference
    # on a fixed pair that is far apart
    theta = torch.tensor([2.0, 0.0, -1.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.0, 0.5, 1.0], dtype=F64).log_softmax(0)
    logp = theta.log_softmax(0)
    pi = logp.exp()
    k3_grad = torch.autograd.grad((pi.detach() * kl_penalty(logp, ref, "k3")).sum(), theta, retain_graph=True)[0]
    forward_grad = torch.autograd.grad((pi * (logp - ref)).sum(), theta)[0]
    assert (k3_grad - forward_grad).abs().max() > 0.1


def random_batch(seed, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, generator=g, dtype=F64).requires_grad_()
    old = (logits.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=F64))
    ref = logits.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, generator=g, dtype=F64) < 0.6).double()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g, dtype=F64)
    return logits, old, ref, mask, adv


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_masked_positions_do_not_change_loss_or_gradient(aggregation, seed):
    logp, old, ref, mask, adv = random_batch(seed)
    kwargs = dict(normalizer=7.0, ref_logp=ref, kl_coef=0.1, aggregation=aggregation)
    loss, _ = grpo_loss(logp, old, adv, mask, **kwargs)
    grad = torch.autograd.grad(loss, logp)[0]
    noise = torch.randn_like(old) * 5 * (1 - mask)  # change everything where mask = 0
    logp2 = (logp.detach() + noise).requires_grad_()
    loss2, _ = grpo_loss(logp2, old + noise * 0.7, adv, mask, **{**kwargs, "ref_logp": ref - noise})
    grad2 = torch.autograd.grad(loss2, logp2)[0]
    assert torch.allclose(loss, loss2, atol=1e-12) and torch.allclose(grad, grad2, atol=1e-12)
    assert torch.all(grad[mask == 0] == 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 0.5))
def test_at_mu_1_the_clipped_gradient_is_advantage_times_grad_logp(seed, eps):
    logp, _, _, mask, adv = random_batch(seed)
    loss, metrics = grpo_loss(logp, logp.detach(), adv, mask, normalizer=mask.sum().item(), clip_eps=eps)
    grad = torch.autograd.grad(loss, logp)[0]
    assert torch.allclose(grad, -adv[:, None] * mask / mask.sum(), atol=1e-12)
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_max"] == 1.0


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("world", [2, 4])
def test_gradient_is_the_same_for_any_number_of_ranks(aggregation, world):
    """Each rank normalises by the GLOBAL count / world size; the all-reduce averages: the result equals one
    process holding the whole batch (and micro-batches within a rank just add up)."""
    logp, old, ref, mask, adv = random_batch(0, B=8)
    count = mask.sum().item() if aggregation == "token_mean" else len(mask)
    kwargs = dict(ref_logp=ref, kl_coef=0.05, aggregation=aggregation)
    loss, _ = grpo_loss(logp, old, adv, mask, normalizer=count, **kwargs)
    full = torch.autograd.grad(loss, logp)[0]
    per_rank = []
    for rows in torch.arange(8).chunk(world):
        grad = torch.zeros_like(logp)
        for micro in rows.chunk(2):  # two micro-batches per rank, accumulated
            part, _ = grpo_loss(logp[micro], old[micro], adv[micro], mask[micro], normalizer=count / world,
                                **{**kwargs, "ref_logp": ref[micro]})
            grad += torch.autograd.grad(part, logp)[0]
        per_rank.append(grad)
    assert torch.allclose(torch.stack(per_rank).mean(0), full, atol=1e-12)


def test_advantage_kinds_by_hand_and_dynamic_sampling():
    rewards = torch.tensor([[1.0, 0.0, -1.0, 0.0], [-1.0, -0.5, -1.0, -0.5], [0.3, 0.3, 0.3, 0.3]], dtype=F64)
    assert torch.allclose(group_advantages(rewards, "mean")[0], torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=F64))
    assert torch.allclose(group_advantages(rewards, "rloo")[0], torch.tensor([4 / 3, 0.0, -4 / 3, 0.0], dtype=F64))
    std = rewards[0].std()  # unbiased: sqrt(2/3)
    assert torch.allclose(group_advantages(rewards, "std")[0], torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=F64) / (std + 1e-6))
    assert keep_group(rewards).tolist() == [True, False, True]
    assert keep_group(rewards, drop_all_equal=True).tolist() == [True, False, False]


# ----------------------------------------------------------------------------------------------------------------
# Values, not invariances: each term of grpo_loss against a formula written out here, element by element
# ----------------------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(K=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_k1_is_unbiased_for_kl(K, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(K, generator=g, dtype=F64).log_softmax(0)
    ref = torch.randn(K, generator=g, dtype=F64).log_softmax(0)
    kl_pi_ref = sum(math.exp(lp) * (lp - r) for lp, r in zip(logp.tolist(), ref.tolist()))
    assert float((logp.exp() * kl_penalty(logp, ref, "k1")).sum()) == pytest.approx(kl_pi_ref, abs=1e-12)
    assert kl_pi_ref > 0


# each estimator's value k(logp, ref) and its derivative d k / d logp, as scalar formulas
KL_FORMULAS = {
    "k1": (lambda lp, r: lp - r, lambda lp, r: 1.0),
    "k2": (lambda lp, r: 0.5 * (lp - r) ** 2, lambda lp, r: lp - r),
    "k3": (lambda lp, r: math.exp(r - lp) - (r - lp) - 1, lambda lp, r: 1 - math.exp(r - lp)),
}


@pytest.mark.parametrize("estimator", sorted(KL_FORMULAS))
@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_kl_term_value_and_gradient_at_zero_advantage(estimator, aggregation):
    """At advantage 0 and ratio 1 the loss is the KL term alone: beta * sum(mask * k) / n (token_mean) or
    beta * sum_b [sum_t mask * k / |b|] / n (sequence_mean), with gradient beta * k'(logp) * mask / (|b|) n."""
    logp, _, ref, mask, _ = random_batch(11, B=4, T=7)
    beta, n = 0.3, 5.0
    loss, metrics = grpo_loss(logp, logp.detach(), torch.zeros(4, dtype=F64), mask, normalizer=n, ref_logp=ref,
                              kl_coef=beta, kl_estimator=estimator, aggregation=aggregation)
    grad = torch.autograd.grad(loss, logp)[0]
    value, slope = KL_FORMULAS[estimator]
    expected_loss, expected_grad = 0.0, torch.zeros_like(grad)
    kl_sum = 0.0
    for b in range(4):
        count = sum(mask[b].tolist())
        scale = beta / n / (count if aggregation == "sequence_mean" else 1.0)
        for t in range(7):
            if mask[b, t]:
                lp, r = float(logp[b, t].detach()), float(ref[b, t])
                expected_loss += scale * value(lp, r)
                expected_grad[b, t] = scale * slope(lp, r)
                kl_sum += value(lp, r)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12) and expected_loss != 0
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    assert metrics["kl"] == pytest.approx(kl_sum / float(mask.sum()), abs=1e-12)


def plain_ppo_token(ratio: float, adv: float, eps: float) -> tuple[float, float]:
    """One token of PPO's clipped surrogate, written out: (loss, d loss / d log pi). The objective is
    min(r A, clip(r, 1 - eps, 1 + eps) A); where the clipped term is the smaller one it is constant in pi."""
    clipped_ratio = min(max(ratio, 1 - eps), 1 + eps)
    if ratio * adv <= clipped_ratio * adv:
        return -ratio * adv, -ratio * adv  # d(r A)/d log pi = r A
    return -clipped_ratio * adv, 0.0


def test_clipped_loss_by_hand():
    # four one-token sequences: ratios 1.5 and 0.5 around a clip of 0.2, each with A = +1 and A = -1
    logp = torch.tensor([[1.5], [1.5], [0.5], [0.5]], dtype=F64).log().requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)
    loss, metrics = grpo_loss(logp, torch.zeros(4, 1, dtype=F64), adv, torch.ones(4, 1, dtype=F64), normalizer=4.0,
                              clip_eps=0.2)
    # A=+1, r=1.5: min(1.5, 1.2) = 1.2 (clipped, no gradient);  A=-1, r=1.5: min(-1.5, -1.2) = -1.5 (gradient)
    # A=+1, r=0.5: min(0.5, 0.8) = 0.5 (gradient);              A=-1, r=0.5: min(-0.5, -0.8) = -0.8 (clipped)
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4, abs=1e-12)
    grad = torch.autograd.grad(loss, logp)[0]
    assert torch.allclose(grad, torch.tensor([[0.0], [1.5], [-0.5], [0.0]], dtype=F64) / 4, atol=1e-12)
    assert metrics["clip_frac"] == 1.0 and metrics["ratio_max"] == pytest.approx(1.5)


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_clipped_loss_equals_plain_ppo_on_a_random_batch(eps):
    logp, _, _, mask, adv = random_batch(5, B=8, T=6)
    g = torch.Generator().manual_seed(6)
    old = logp.detach() + 0.4 * torch.randn(8, 6, generator=g, dtype=F64)  # ratios well outside 1 +- eps
    loss, metrics = grpo_loss(logp, old, adv, mask, normalizer=9.0, clip_eps=eps)
    grad = torch.autograd.grad(loss, logp)[0]
    expected_loss, expected_grad, cases = 0.0, torch.zeros_like(grad), set()
    for b in range(8):
        for t in range(6):
            if mask[b, t]:
                ratio, a = math.exp(float(logp[b, t].detach() - old[b, t])), float(adv[b])
                value, slope = plain_ppo_token(ratio, a, eps)
                expected_loss += value / 9.0
                expected_grad[b, t] = slope / 9.0
                cases.add((ratio > 1 + eps, ratio < 1 - eps, a > 0))
    assert {(True, False, True), (True, False, False), (False, True, True), (False, True, False)} <= cases
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    ratio = (logp - old).exp()
    assert metrics["clip_frac"] == pytest.approx(float((((ratio - 1).abs() > eps) * mask).sum() / mask.sum()))


def test_sequence_mean_weights_each_sequence_by_its_own_sampled_tokens():
    # two sequences padded to T = 4 with 1 and 4 sampled tokens, per-token losses -A (ratio 1): each sequence's
    # mean is -A whatever its length, so the loss is -(A_0 + A_1) / normalizer
    logp = torch.zeros(2, 4, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    adv = torch.tensor([2.0, -0.5], dtype=F64)
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, normalizer=2.0, aggregation="sequence_mean")
    assert loss.item() == pytest.approx(-(2.0 - 0.5) / 2)
    grad = torch.autograd.grad(loss, logp)[0]
    assert torch.allclose(grad, torch.tensor([[-2.0, 0, 0, 0], [0.5 / 4] * 4], dtype=F64) / 2)
    token_loss, _ = grpo_loss(logp, logp.detach(), adv, mask, normalizer=5.0)
    assert token_loss.item() == pytest.approx(-(2.0 - 0.5 * 4) / 5)  # token_mean: the long sequence weighs 4x


def test_keep_group_by_hand():
    rewards = torch.tensor([[-1.0, -0.5], [-1.0, -1.0], [0.2, 0.2], [-0.5, 0.3], [0.0, 0.0]], dtype=F64)
    assert keep_group(rewards).tolist() == [False, False, True, True, True]
    assert keep_group(rewards, drop_all_equal=True).tolist() == [False, False, False, True, False]
    assert keep_group(rewards, drop_all_negative=False, drop_all_equal=True).tolist() == [True, False, False, True,
                                                                                          False]
    assert keep_group(rewards, drop_all_negative=False).tolist() == [True] * 5


# ----------------------------------------------------------------------------------------------------------------
# What dynamic sampling and token-mean aggregation do to Prop 4.1 (exact enumeration; docs/grpo.md)
# ----------------------------------------------------------------------------------------------------------------


POLICY_CASE = dict(theta=[0.3, -0.2, 0.5, 0.1], rewards=[0.9, 0.2, -0.5, -1.0], lengths=[3.0, 9.0, 5.0, 2.0])


def policy_case():
    theta = torch.tensor(POLICY_CASE["theta"], dtype=F64, requires_grad=True)
    return theta, theta.log_softmax(0), *(torch.tensor(POLICY_CASE[k], dtype=F64) for k in ("rewards", "lengths"))


@pytest.mark.parametrize("G", [2, 3])
def test_dropping_equal_reward_groups_only_rescales_the_gradient(G):
    """Groups with equal rewards have zero advantages: dropping them changes the length of E[g], not its direction
    (E[g | kept] = (G - 1) / G * grad J / P(kept))."""
    theta, logp, rewards, lengths = policy_case()
    truth = exact_gradient(logp, rewards, theta)
    est = expected_estimator(logp, rewards, G, "mean", theta, drop_all_equal=True)
    assert cosine(est, truth) == pytest.approx(1.0, abs=1e-12)
    p_kept = 1 - float((logp.detach().exp() ** G).sum())  # rewards are distinct: equal <=> the same outcome G times
    assert torch.allclose(est, (G - 1) / G * truth / p_kept, atol=1e-12)


@pytest.mark.parametrize("G", [2, 3])
def test_dropping_all_negative_groups_biases_the_direction(G):
    """An all-negative group with unequal rewards (-0.5, -1) has nonzero advantages: dropping it (the paper's
    dynamic sampling, on by default) removes part of the signal, and E[g | kept] is no longer parallel to grad J."""
    theta, logp, rewards, lengths = policy_case()
    truth = exact_gradient(logp, rewards, theta)
    est = expected_estimator(logp, rewards, G, "mean", theta, drop_all_negative=True)
    assert cosine(est, truth) == pytest.approx({2: 0.98958, 3: 0.99676}[G], abs=1e-5)  # docs/grpo.md: 0.990, 0.997


def test_token_mean_aggregation_biases_the_direction():
    """token_mean divides by the batch's sampled-token count, which depends on the samples: long rollouts weigh
    less per sequence, and E[g] leaves the direction of grad J (sequence weights 1 keep Prop 4.1 exact)."""
    theta, logp, rewards, lengths = policy_case()
    truth = exact_gradient(logp, rewards, theta)
    plain = expected_estimator(logp, rewards, 2, "mean", theta)
    assert torch.allclose(plain, 0.5 * truth, atol=1e-12)
    token_mean = expected_estimator(logp, rewards, 2, "mean", theta, lengths=lengths)
    assert cosine(token_mean, truth) == pytest.approx(0.99056, abs=1e-5)  # docs/grpo.md: 0.991


def test_advantage_stats_by_hand():
    advantages = torch.tensor([[0.5, -0.5], [0.0, 0.0], [1.5, -1.5]])
    assert advantage_stats(advantages) == {"adv_abs_mean": pytest.approx(4 / 6), "adv_max": 1.5, "adv_min": -1.5}
