"""Teacher-forced log-probs of rollouts for the update, with each group's shared prompt encoded ONCE.

The G rollouts of one instance share a prompt that is most of their tokens (an 800-token prompt and 128 sampled
tokens: 86%). ``group_logprobs`` runs the prompt through the model once (with autograd), keeps its keys and
values in a ``PrefixCache``, and runs the G continuations against them: the continuations' attention reads the
one prefix (expanded, not copied), and in the backward pass the prompt's activations receive the gradients of
all G continuations at once. The result equals G separate full-sequence passes (tests/test_policy.py).
"""

from __future__ import annotations

import torch


class PrefixCache:
    """The KV-cache protocol over a shared prefix with autograd: the prefix pass (positions from 0, batch 1)
    records each layer's keys / values; later passes attend to cat(prefix expanded to their batch, their own).
    Which pass it is follows from the arguments alone (kv_len == chunk length <=> positions start at 0), so
    activation checkpointing can recompute either pass."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def update(self, layer_idx, positions, k, v, kv_len):
        if kv_len == k.shape[2]:  # the prefix pass
            self.k[layer_idx], self.v[layer_idx] = k, v
            return k, v
        B = k.shape[0]
        prefix_k = self.k[layer_idx].expand(B, -1, -1, -1)
        prefix_v = self.v[layer_idx].expand(B, -1, -1, -1)
        return torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)


def group_logprobs(model, prompt: list[int], continuations: list[list[int]], temperature: float = 1.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(token) at ``temperature`` for every token of every continuation, [G, L] (L = the longest; padding
    positions hold 0). Token j of continuation g is scored given prompt + continuation[:j]. With ``mask`` [G, L],
    only positions where it is nonzero are scored (the others hold 0): observations need no LM head."""
    device = next(model.parameters()).device
    P, G = len(prompt), len(continuations)
    L = max(len(c) for c in continuations)
    width = max(L, 2)  # the continuation pass always runs (an FSDP forward is a collective: same count on every rank)
    cache = PrefixCache()
    prompt_ids = torch.tensor([prompt], device=device)
    first = torch.tensor([[c[0]] for c in continuations], device=device)  # [G, 1]
    prompt_logits = model(prompt_ids, kv_cache=cache, last_index=torch.tensor([P - 1], device=device))  # [1, V]
    first_lp = (prompt_logits.float() / temperature).log_softmax(-1)[0, first[:, 0]][:, None]  # [G, 1]
    ids = torch.tensor([c + [0] * (width - len(c)) for c in continuations], device=device)  # [G, width]
    positions = (P + torch.arange(width - 1, device=device)).expand(G, width - 1)
    lengths = torch.tensor([len(c) for c in continuations], device=device)
    wanted = torch.arange(1, width, device=device)[None] < lengths[:, None]  # real targets only (never padding)
    if mask is not None:
        wanted[:, :L - 1] &= mask[:, 1:].to(device) > 0
    kept = torch.cat([torch.ones_like(wanted[:, :1]), wanted], dim=1)  # [G, width]: what the caller gets
    scored = wanted.clone()
    if not scored.any():  # score one position per row anyway (dropped below): the same graph on every rank
        scored[:, 0] = True
    rest_lp = model(ids[:, :-1], positions, cache, targets=ids[:, 1:], target_mask=scored,
                    temperature=temperature)  # [G, width - 1]
    return (torch.cat([first_lp, rest_lp], dim=1) * kept)[:, :L]


def sft_loss(model, batch: list[tuple[list[int], list[int]]], device) -> torch.Tensor:
    """Mean negative log-likelihood of the mask-1 tokens of ``batch`` ((ids, mask) pairs), teacher-forced: the warm
    start's loss on the expert's trajectories, and PPR's rehearsal term on the stage-1 policy's own."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch], device=device)
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], device=device, dtype=torch.float)
    logp = model(ids[:, :-1], targets=ids[:, 1:], target_mask=mask[:, 1:] > 0)  # LM head on sampled tokens only
    return -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
