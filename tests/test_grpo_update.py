"""The trainer's path from rollouts to a gradient, against the policy-gradient formula written out here.

`update` turns groups of trajectories into one optimiser step. Its gradient must equal, for every parameter,

    grad of  sum_{groups, g, t} w_group * mask[g, t] * L_{g, t} / N
    L_{g, t} = -min(r A_g, clip(r, 1 - eps, 1 + eps) A_g) + beta * k3(log pi, log ref),   r = pi / pi_old

with log pi from ONE full forward over each trajectory's ids at the sampling temperature (no prefix sharing),
A_g = R_g - mean(R) per group, N = the kept groups' sampled tokens (token_mean) or sequences (sequence_mean), and
the mask the rollout recorded. A consistent bug (a shifted mask, a wrong normaliser, a padded group trained on)
passes the invariance tests (1 rank = 4 ranks, resume = uninterrupted); it fails these.
"""

from types import SimpleNamespace

import pytest
import torch

from agenticrec import distributed as D
from agenticrec.agent import ToolCallRecord, Trajectory
from agenticrec.data import Instance
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.trainer import (GroupBatch, Objective, Sampling, collect_groups, group_tensors, tool_path_stats,
                                update, update_metrics)

SINGLE = D.DistInfo(0, 1, 0, torch.device("cpu"), None)
INSTANCE = Instance("u", [1, 2], 3, [3, 4, 5], position=2)
VOCAB = 61


def tiny_model(seed: int) -> Qwen3:
    torch.manual_seed(seed)
    return Qwen3(Qwen3Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True))


def trajectory(prompt: list[int], turns: list[tuple[list[int], int]], reward: float) -> Trajectory:
    """prompt + turns, each (ids, 1) when sampled or (ids, 0) when forced (an observation)."""
    ids, mask = list(prompt), [0] * len(prompt)
    for chunk, sampled in turns:
        ids += chunk
        mask += [sampled] * len(chunk)
    logprobs = [-0.1 * (j % 7) * m for j, m in enumerate(mask)]  # a sampler's log-probs: 0 where not sampled
    t = Trajectory(INSTANCE, 0, ids, mask, logprobs, len(prompt))
    t.reward = reward
    return t


def groups_for_test() -> list[list[Trajectory]]:
    """Two groups of three: multi-turn continuations (sampled turn, observation, sampled turn) of unequal lengths."""
    g = torch.Generator().manual_seed(7)

    def ids(n):
        return torch.randint(0, VOCAB, (n,), generator=g).tolist()

    out = []
    for rewards in ([0.9, -0.5, 0.2], [-1.0, 1.1, 0.0]):
        prompt = ids(9)
        out.append([trajectory(prompt, [(ids(3 + k), 1), (ids(4), 0), (ids(2 + 2 * k), 1)], r)
                    for k, r in enumerate(rewards)])
    return out


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradient of every step it takes."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


def run_update(groups, weights, cfg, model_seed=0, lr=1.0):
    model, ref = tiny_model(model_seed), tiny_model(model_seed + 1)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = RecordingSGD(model.parameters(), lr)
    stats = update(model, ref if cfg.kl_coef else None, optimizer, GroupBatch(groups, weights, []), cfg, SINGLE)
    return optimizer.grads, start, ref, stats


def full_logprobs(model, t: Trajectory, temperature: float) -> torch.Tensor:
    """log pi(ids[j] | ids[:j]) for every j >= 1 from one full forward, [len(ids) - 1]."""
    ids = torch.tensor([t.ids])
    logits = model(ids)[0, :-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


def model_at(params) -> Qwen3:
    model = tiny_model(0)
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
    return model


def formula_gradient(params, ref, groups, weights, cfg, old_params=None) -> list[torch.Tensor]:
    """The gradient of the objective in the module docstring at ``params`` (pi_old at ``old_params``; None: pi_old
    = pi, the on-policy first step). Groups of weight 0 are left out."""
    model = model_at(params)
    old_model = model_at(old_params) if old_params is not None else None
    kept = [group for group, w in zip(groups, weights) if w > 0]
    if cfg.aggregation == "token_mean":
        normalizer = sum(sum(t.mask) for group in kept for t in group)
    else:
        normalizer = sum(len(group) for group in kept)
    total = 0.0
    for group in kept:
        mean = sum(t.reward for t in group) / len(group)
        for t in group:
            advantage = t.reward - mean
            mask = torch.tensor(t.mask[1:], dtype=torch.float)  # position j scores ids[j + 1]
            logp = full_logprobs(model, t, cfg.temperature)
            with torch.no_grad():
                old = logp.detach() if old_model is None else full_logprobs(old_model, t, cfg.temperature)
                ref_logp = full_logprobs(ref, t, cfg.temperature)
            ratio = torch.exp(logp - old)
            clipped = ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
            per_token = -torch.minimum(ratio * advantage, clipped * advantage)
            per_token = per_token + cfg.kl_coef * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
            summed = (per_token * mask).sum()
            total = total + (summed / mask.sum() if cfg.aggregation == "sequence_mean" else summed)
    return list(torch.autograd.grad(total / normalizer, list(model.parameters())))


def config(**overrides) -> Objective:
    return Objective(**{"advantage": "mean", "aggregation": "token_mean", "clip_eps": 0.2, "kl_coef": 0.05,
                        "kl_estimator": "k3", "temperature": 0.7, "mu": 1, "grad_clip": 1e9, "update_rows": 0,
                        **overrides})


def assert_same(grads, expected):
    """Each parameter's gradient equals the expected one to 1e-5 of the largest expected entry (float32 model)."""
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1e-4  # the test has a gradient to compare
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("aggregation,update_rows", [("token_mean", 0), ("sequence_mean", 0), ("token_mean", 2),
                                                     ("sequence_mean", 1)])
def test_update_gradient_is_the_policy_gradient_formula(aggregation, update_rows):
    """Also with each group's continuations in pieces of ``update_rows`` (a memory knob, not a change of math)."""
    groups, cfg = groups_for_test(), config(aggregation=aggregation, update_rows=update_rows)
    grads, start, ref, stats = run_update(groups, [1.0, 1.0], cfg)
    assert len(grads) == 1
    assert_same(grads[0], formula_gradient(start, ref, groups, [1.0, 1.0], cfg))
    assert stats["tokens"] == sum(sum(t.mask) for g in groups for t in g)


@pytest.mark.parametrize("mu", [1, 2])
def test_update_adds_the_rehearsal_gradient_to_each_step(mu):
    """PPR's --replay-coef: ``rehearsal()``'s gradient joins each optimiser step's, before clipping; ``mu`` steps
    call it ``mu`` times. (The first step's gradient is the formula's plus the rehearsal's, at the start weights.)"""
    groups, cfg = groups_for_test(), config(mu=mu)
    model, ref = tiny_model(0), tiny_model(1)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = RecordingSGD(model.parameters(), 1e-3)
    replay = torch.tensor([[5, 9, 2, 33, 7, 41, 12]])

    def half_nll(m):
        return -0.5 * m(replay)[0, :-1].log_softmax(-1).gather(-1, replay[0, 1:, None]).mean()

    calls = []
    update(model, ref, optimizer, GroupBatch(groups, [1.0, 1.0], []), cfg, SINGLE,
           rehearsal=lambda: calls.append(1) or half_nll(model))
    at_start = model_at(start)
    extra = torch.autograd.grad(half_nll(at_start), list(at_start.parameters()))
    assert len(calls) == len(optimizer.grads) == mu
    assert_same(optimizer.grads[0], [f + e for f, e in zip(formula_gradient(start, ref, groups, [1.0, 1.0], cfg),
                                                            extra)])


def test_update_with_mu_2_clips_against_the_first_pass():
    """Step 1 is on-policy (ratio 1); step 2 is at the moved weights with pi_old from before step 1, and the
    clip is active on some tokens."""
    groups, cfg = groups_for_test(), config(mu=2, clip_eps=0.02, update_rows=2)
    grads, start, ref, _ = run_update(groups, [1.0, 1.0], cfg, lr=3.0)
    assert len(grads) == 2
    assert_same(grads[0], formula_gradient(start, ref, groups, [1.0, 1.0], cfg))
    moved = [p - 3.0 * g for p, g in zip(start, grads[0])]
    assert_same(grads[1], formula_gradient(moved, ref, groups, [1.0, 1.0], cfg, old_params=start))
    model, old = model_at(moved), model_at(start)
    with torch.no_grad():
        ratios = torch.cat([(full_logprobs(model, t, cfg.temperature) - full_logprobs(old, t, cfg.temperature)).exp()
                            [torch.tensor(t.mask[1:]) > 0] for group in groups for t in group])
    assert ((ratios - 1).abs() > cfg.clip_eps).any()  # the clip acts on some sampled tokens


def test_the_logged_sampler_gap_is_the_mean_absolute_log_prob_difference():
    """sampler_logp_gap: mean |log pi_trainer - log pi_sampler| over the sampled tokens, at the first pass;
    sampler_logp_gap_max: the largest."""
    groups, cfg = groups_for_test(), config()
    _, start, _, stats = run_update(groups, [1.0] * len(groups), cfg)
    model, total, tokens, largest = model_at(start), 0.0, 0.0, 0.0
    for t in (t for group in groups for t in group):
        mask = torch.tensor(t.mask[1:], dtype=torch.float)  # position j scores ids[j + 1]
        with torch.no_grad():
            gap = full_logprobs(model, t, cfg.temperature) - torch.tensor(t.logprobs[1:])
        total, tokens = total + float((gap.abs() * mask).sum()), tokens + float(mask.sum())
        largest = max(largest, float((gap.abs() * mask).max()))
    logged = update_metrics(stats, SINGLE)
    assert logged["sampler_logp_gap"] == pytest.approx(total / tokens, rel=1e-5)
    assert logged["sampler_logp_gap_max"] == pytest.approx(largest, rel=1e-5) and largest > 0


def test_update_clips_the_gradient_norm():
    """With --grad-clip below the gradient's norm, the step takes the formula's gradient scaled to that norm."""
    groups, cfg = groups_for_test(), config(grad_clip=1e-3)
    grads, start, ref, stats = run_update(groups, [1.0, 1.0], cfg)
    expected = formula_gradient(start, ref, groups, [1.0, 1.0], cfg)
    norm = float(torch.cat([e.flatten() for e in expected]).norm())
    assert norm > 10 * cfg.grad_clip and stats["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert_same(grads[0], [e * cfg.grad_clip / norm for e in expected])


def test_a_padded_group_changes_nothing():
    """[kept, padded] with weights [1, 0] gives the update of [kept] alone: the padded group carries no loss (neither
    its advantages, nonzero here since its rewards are unequal, nor its KL term) and is not in the normaliser."""
    kept, padded = groups_for_test()
    for t, r in zip(padded, (-1.0, -0.5, -1.0)):
        t.reward = r
    cfg = config()
    with_padding = run_update([kept, padded], [1.0, 0.0], cfg)[0]
    alone = run_update([kept], [1.0], cfg)[0]
    for a, b in zip(with_padding[0], alone[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_trainer_mask_is_the_rollout_mask_after_the_prompt_padded():
    prompt = [5, 6, 7, 8]
    group = [trajectory(prompt, [([10, 11], 1), ([12, 13, 14], 0), ([15], 1)], 0.0),
             trajectory(prompt, [([20], 1)], 0.0)]
    g = group_tensors(group, torch.device("cpu"))
    assert g.prompt == prompt and g.continuations == [[10, 11, 12, 13, 14, 15], [20]]
    assert g.mask.tolist() == [[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    # the sampler's log-probs of the same positions: trajectory() gives position j the value -0.1 * (j % 7)
    expected = [[-0.4, -0.5, 0.0, 0.0, 0.0, -0.2], [-0.4, 0.0, 0.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(g.sampler_logp, torch.tensor(expected))


# ------------------------------------------------------------------------------------------------------------------
# Dynamic sampling: which groups are kept, dropped, refilled and padded
# ------------------------------------------------------------------------------------------------------------------


class ListStream:
    """Instances in a fixed order (what collect_groups takes from a DataStream)."""

    def __init__(self, instances):
        self.instances, self.position = list(instances), 0

    def take(self, n):
        out = self.instances[self.position:self.position + n]
        self.position += n
        return out


class FixedRewardRollout:
    """A rollout whose group rewards are fixed per instance (by its user name)."""

    def __init__(self, rewards: dict[str, list[float]], max_rows: int | None = None):
        self.rewards, self.calls, self.slots = rewards, [], []
        self.engine = SimpleNamespace(max_rows=max_rows, max_len=64)

    def run(self, instances, group_size, seed, slots=None):
        self.calls.append([x.user for x in instances])
        self.slots.append(slots)
        out = []
        for x in instances:
            for r in self.rewards[x.user]:
                t = Trajectory(x, 0, [1, 2], [0, 1], [0.0, 0.0], 1)
                t.reward = r
                out.append(t)
        return out


REWARDS = {"mixed": [0.5, -0.5], "negative": [-1.0, -0.5], "equal": [0.3, 0.3], "spread": [1.0, -1.0],
           "invalid": [-1.0, -1.0]}


def collect(drop_all_equal: bool, refill_rounds: int = 1, rollout: FixedRewardRollout | None = None):
    instances = [Instance(u, [1], 2, [2, 3], position=1) for u in ("mixed", "negative", "equal", "spread", "invalid")]
    rollout = rollout or FixedRewardRollout(REWARDS)
    sampling = Sampling(groups_per_rank=3, group_size=2, drop_all_negative=True, drop_all_equal=drop_all_equal,
                        refill_rounds=refill_rounds, rollout_groups=0, seed=0)
    b = collect_groups(rollout, ListStream(instances), sampling, 0, SINGLE)
    return [g[0].instance.user for g in b.groups], b.weights, len(b.trajectories), b.dropped, b.padded, rollout.calls


def test_dynamic_sampling_drops_all_negative_groups_and_refills():
    users, weights, n, dropped, padded, calls = collect(drop_all_equal=False)
    assert calls == [["mixed", "negative", "equal"], ["spread"]]
    assert users == ["mixed", "equal", "spread"] and weights == [1.0, 1.0, 1.0]
    assert (n, dropped, padded) == (8, 1, 0)


def test_dynamic_sampling_drops_equal_groups_when_asked_and_pads_what_it_cannot_refill():
    users, weights, n, dropped, padded, calls = collect(drop_all_equal=True)
    assert calls == [["mixed", "negative", "equal"], ["spread", "invalid"]]
    assert users == ["mixed", "spread", "negative"] and weights == [1.0, 1.0, 0.0]  # padded with a dropped group
    assert (n, dropped, padded) == (10, 3, 1)


def test_each_round_is_one_call_with_as_many_groups_in_flight_as_the_kv_budget_holds():
    """5 rows fit the budget: groups of 2 -> 2 groups in flight (4 slots); the round's 3 groups in one call, the third
    queued (continuous batching), and the refill round's single group in 2 slots."""
    rollout = FixedRewardRollout(REWARDS, max_rows=5)
    *_, calls = collect(drop_all_equal=False, rollout=rollout)
    assert calls == [["mixed", "negative", "equal"], ["spread"]] and rollout.slots == [4, 2]


def test_dynamic_sampling_without_refill_rounds_pads_at_once():
    users, weights, _, dropped, padded, calls = collect(drop_all_equal=False, refill_rounds=0)
    assert calls == [["mixed", "negative", "equal"]]
    assert users == ["mixed", "equal", "negative"] and weights == [1.0, 1.0, 0.0] and (dropped, padded) == (1, 1)


def test_tool_path_stats_by_hand():
    """Two groups of two: the advantage of a path is its rollouts' reward minus THEIR group's mean, averaged."""
    def rollout(tools: list[str], reward: float) -> Trajectory:
        t = Trajectory(INSTANCE, 0, [1, 2], [0, 1], [0.0, 0.0], 1, reward=reward)
        t.tool_calls = [ToolCallRecord(name, {}, None, 0.0, "", 0) for name in tools]
        return t
    trajectories = [rollout(["a", "b"], 1.0), rollout([], 0.0),  # group mean 0.5
                    rollout(["a", "b"], 0.2), rollout(["b"], 0.6)]  # group mean 0.4
    stats = tool_path_stats(trajectories, 2, SINGLE)
    assert list(stats) == ["a>b", "b", "none"]
    assert stats["a>b"] == pytest.approx({"n": 2, "reward": 0.6, "advantage": (0.5 - 0.2) / 2})
    assert stats["b"] == pytest.approx({"n": 1, "reward": 0.6, "advantage": 0.2})
    assert stats["none"] == pytest.approx({"n": 1, "reward": 0.0, "advantage": -0.5})
