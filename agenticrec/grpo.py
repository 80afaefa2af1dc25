"""List-wise GRPO as small pure functions of tensors. Each returns what it computes (and metrics); the math and
its source are in the docstrings, the derivations in docs/grpo.md.

Shapes: N groups of G rollouts; B = N * G sequences; T tokens per (padded) sequence; mask [B, T] is 1 exactly on
tokens the policy sampled (observations, prompt and padding are 0).
"""

from __future__ import annotations

import torch

ADVANTAGES = ("mean", "std", "rloo")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "sequence_mean")


def group_advantages(rewards: torch.Tensor, kind: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """Advantages [N, G] from rewards [N, G] (one row per group of G rollouts of the same instance).

    mean  (the paper):      A_g = R_g - mean_j R_j
    std   (TRL / verl):     A_g = (R_g - mean_j R_j) / (std_j R_j + eps)      (unbiased std)
    rloo  (leave-one-out):  A_g = R_g - mean_{j != g} R_j = G / (G - 1) * (R_g - mean_j R_j)

    Prop 4.1 (AgenticRec): with the inclusive mean, E[(1/G) sum_g A_g grad log pi(y_g)] = (G - 1) / G * grad E[R]:
    the right direction, scaled by a constant. rloo is exactly unbiased; std is biased and not even parallel
    (tests/test_grpo.py enumerates all G-tuples of a small policy to check all three).
    """
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; choose from {ADVANTAGES}")
    G = rewards.shape[-1]
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if kind == "mean":
        return centred
    if kind == "rloo":
        if G < 2:
            raise ValueError("rloo needs a group size of at least 2")
        return centred * G / (G - 1)
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples y ~ pi (Schulman, "Approximating KL divergence", 2020).

    k1 = log pi - log ref                         E[k1] = KL(pi||ref); grad E_pathwise[k1] = 0 (useless as a loss)
    k2 = 1/2 (log pi - log ref)^2                 E[grad k2] = grad KL(pi||ref)
    k3 = exp(log ref - log pi) - (log ref - log pi) - 1   >= 0,  E[k3] = KL(pi||ref),
                                                  but E[grad k3] = grad KL(ref||pi)   (the reverse KL's gradient)
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}")
    delta = ref_logp - logp
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta**2
    return torch.exp(delta) - delta - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              normalizer: float, ref_logp: torch.Tensor | None = None, clip_eps: float = 0.2, kl_coef: float = 0.0,
              kl_estimator: str = "k3", aggregation: str = "token_mean") -> tuple[torch.Tensor, dict]:
    """The PPO-clipped GRPO objective with a KL penalty, as a loss to minimise, and its diagnostics.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] (one per sequence, broadcast over its tokens).

        r_t     = exp(log pi(y_t) - log pi_old(y_t))
        L_t     = -min(r_t A, clip(r_t, 1 - eps, 1 + eps) A) + beta * KL_t
        token_mean:     loss = sum_{b,t} mask L_t / normalizer        (normalizer = global sampled-token count)
        sequence_mean:  loss = sum_b [sum_t mask L_t / sum_t mask] / normalizer   (normalizer = global sequences)

    The normalizer is passed in, never computed from this batch: it is the count over the WHOLE global batch
    (all micro-batches on all ranks) divided by the data-parallel world size, because the gradient all-reduce
    averages over ranks. Then the summed gradient equals the full-batch gradient for any split over ranks and
    micro-batches (test (f)). At mu = 1 (one update per rollout batch, old = pi.detach()) the ratio is exactly 1 and
    the gradient is -A grad log pi / normalizer per sampled token (test (e)).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = kl_penalty(logp, ref_logp, kl_estimator) if ref_logp is not None else torch.zeros_like(logp)
    if kl_coef:
        per_token = per_token + kl_coef * kl
    if aggregation == "token_mean":
        loss = (per_token * mask).sum() / normalizer
    else:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / normalizer
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        clipped = ((ratio - 1).abs() > clip_eps).to(logp.dtype)
        log_ratio = logp - old_logp
        metrics = {"kl": float((kl * mask).sum() / n), "clip_frac": float((clipped * mask).sum() / n),
                   "approx_kl_old": float(((torch.exp(log_ratio) - 1 - log_ratio) * mask).sum() / n),
                   "ratio_max": float((ratio * mask).max()), "tokens": float(mask.sum())}
    return loss, metrics


def advantage_stats(advantages: torch.Tensor) -> dict:
    """The spread of the advantages [N, G] the loss sees (the reward statistics and the share of zero-std groups
    are logged over every group rolled out, ``agenticrec.trainer.group_stats``)."""
    return {"adv_abs_mean": float(advantages.abs().mean()), "adv_max": float(advantages.max()),
            "adv_min": float(advantages.min())}


def keep_group(rewards: torch.Tensor, drop_all_negative: bool = True, drop_all_equal: bool = False) -> torch.Tensor:
    """Dynamic sampling (DAPO-style), per group [N, G] -> keep [N] bool. The paper drops groups whose rewards are
    all negative (every rollout invalid or missing the target); dropping groups whose rewards are all equal (zero
    advantage, zero gradient) is an option."""
    keep = torch.ones(len(rewards), dtype=torch.bool)
    if drop_all_negative:
        keep &= ~(rewards < 0).all(dim=-1)
    if drop_all_equal:
        keep &= ~(rewards == rewards[:, :1]).all(dim=-1)
    return keep
