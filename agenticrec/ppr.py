"""Stage 2 of AgenticRec: Progressive Preference Refinement (PPR). Source: ../shared/paper.md, "Stage 2".

1. Mining. Run the stage-1 policy on TRAINING instances. A ranking violation is a valid answer whose first item is
   not the target c+. The hard-negative pool is the items ranked above c+, or the whole top-K when c+ is absent;
   one c- is drawn uniformly from it (seeded), so not always the top one. Invalid rollouts are skipped and counted.
2. Bidirectional tasks. Each pair (c+, c-) becomes two tasks in the same user context, "which item is the user
   MORE likely to choose?" (answer c+) and "... LESS likely ..." (answer c-), options A / B with c+ at A for
   exactly half of the pairs (seeded), answered ``\\boxed{A}`` or ``\\boxed{B}``.
3. Objectives. ``grpo`` (the paper): the stage-1 trainer with reward 1 / 0 (invalid as in stage 1). ``logistic``:
   the bidirectional loss of Proposition 4.2 on the model's own answer likelihoods (``bidirectional_loss``).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agenticrec.data import Instance, temp_path
from agenticrec.tasks import LESS, MORE, PreferenceTask


# ----------------------------------------------------------------------------------------------------------------
# Mining
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A mined preference pair: the user's context, the target c+ and one hard negative c-."""

    user: str
    history: tuple[int, ...]
    position: int | None
    positive: int
    negative: int
    negative_rank: int  # 1-based rank of c- in the policy's answer
    target_rank: int | None  # 1-based rank of c+ in the answer, None when absent
    pool_size: int


def violation_pool(ranking: tuple[int, ...], target: int) -> list[int] | None:
    """The hard-negative pool of one valid answer: the items ranked above the target, or the whole answer when the
    target is absent; None when the target is ranked first (no violation)."""
    if target not in ranking:
        return list(ranking)
    above = list(ranking[:ranking.index(target)])
    return above or None


def mine_pairs(trajectories, seed: int = 0) -> tuple[list[Pair], dict]:
    """One pair per violating trajectory (c- uniform over its pool), and the mining statistics."""
    rng = random.Random(seed)
    pairs, pool_sizes, negative_ranks, invalid = [], Counter(), Counter(), 0
    for t in trajectories:
        if t.ranking is None:
            invalid += 1
            continue
        pool = violation_pool(t.ranking, t.instance.target)
        if pool is None:
            continue
        negative = rng.choice(pool)
        x, rank = t.instance, t.ranking.index(negative) + 1
        target_rank = t.ranking.index(x.target) + 1 if x.target in t.ranking else None
        pairs.append(Pair(x.user, tuple(x.history), x.position, x.target, negative, rank, target_rank, len(pool)))
        pool_sizes[len(pool)] += 1
        negative_ranks[rank] += 1
    valid = len(trajectories) - invalid
    stats = {"rollouts": len(trajectories), "invalid_skipped": invalid, "violations": len(pairs),
             "violation_rate": len(pairs) / max(1, valid), "target_absent": sum(p.target_rank is None for p in pairs),
             "pool_size_mean": sum(p.pool_size for p in pairs) / max(1, len(pairs)),
             "pool_sizes": dict(sorted(pool_sizes.items())), "negative_ranks": dict(sorted(negative_ranks.items()))}
    return pairs, stats


def random_pairs(instances: list[Instance], seed: int = 0) -> list[Pair]:
    """The ``--random-negatives`` ablation: c- uniform over the candidates other than the target."""
    rng = random.Random(seed)
    out = []
    for x in instances:
        negative = rng.choice([c for c in x.candidates if c != x.target])
        out.append(Pair(x.user, tuple(x.history), x.position, x.target, negative, x.candidates.index(negative) + 1,
                        None, len(x.candidates) - 1))
    return out


def write_pairs(path: Path, pairs: list[Pair], stats: dict) -> None:
    """Pairs as JSON lines and the statistics beside them (``<name>.stats.json``), each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for file, text in ((path, "".join(json.dumps(asdict(p)) + "\n" for p in pairs)),
                       (path.with_suffix(".stats.json"), json.dumps(stats, indent=2))):
        tmp = temp_path(file)
        tmp.write_text(text)
        tmp.replace(file)


def read_pairs(path: Path) -> list[Pair]:
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            pairs.append(Pair(**{**row, "history": tuple(row["history"])}))
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise ValueError(f"{path}:{n}: not a mined pair ({err})") from None
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Bidirectional tasks
# ----------------------------------------------------------------------------------------------------------------


def bidirectional_tasks(pairs: list[Pair], seed: int = 0, unidirectional: bool = False,
                        split: str = "train") -> list[PreferenceTask]:
    """MORE and LESS tasks for every pair (MORE only when ``unidirectional``), in pair order. Both tasks of a pair
    share one A / B layout; c+ is at A for exactly ceil(n/2) of the n pairs, which ones drawn by ``seed``."""
    at_a = [True] * math.ceil(len(pairs) / 2) + [False] * (len(pairs) // 2)
    random.Random(seed).shuffle(at_a)
    tasks = []
    for i, (pair, positive_first) in enumerate(zip(pairs, at_a)):
        options = [pair.positive, pair.negative] if positive_first else [pair.negative, pair.positive]
        for direction in (MORE,) if unidirectional else (MORE, LESS):
            target = pair.positive if direction == MORE else pair.negative
            tasks.append(PreferenceTask(pair.user, list(pair.history), target, options, pair.position, split,
                                        direction, i))
    return tasks


# ----------------------------------------------------------------------------------------------------------------
# Proposition 4.2: the bidirectional logistic loss
# ----------------------------------------------------------------------------------------------------------------


def bidirectional_loss(margin_more: torch.Tensor, margin_less: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L_bi = mean over pairs of  -log sigma(d_MORE) - log sigma(d_LESS)  =  softplus(-d_MORE) + softplus(-d_LESS).

    margin_more [P]: s_MORE(c+) - s_MORE(c-), the model's preference for c+ when asked MORE;
    margin_less [P]: s_LESS(c-) - s_LESS(c+), its preference for c- when asked LESS (None: unidirectional).
    With P(answer X) from a two-way softmax over the answers' scores, -log P(c+ | MORE) = softplus(-d_MORE).

    Proposition 4.2 (paper): when one score s rates both directions (s_LESS = -s), d_MORE = d_LESS = ds and
    L_bi = 2 log(1 + e^{-ds}): convex in ds, >= 2 log 2 * 1[ds < 0] (so it bounds the pairwise ranking error), and
    its gradient -2 sigma(-ds) tends to -2, not 0, as ds -> -inf (mined violations still teach).
    """
    loss = -F.logsigmoid(margin_more)  # softplus(-d) without softplus's linear cut-off at |d| > 20
    correct = (margin_more > 0).float()
    if margin_less is not None:
        loss = loss - F.logsigmoid(margin_less)
        correct = torch.cat([correct, (margin_less > 0).float()])
    return loss.mean(), {"loss": float(loss.mean().detach()), "accuracy": float(correct.mean())}


def answer_text(choice: str) -> str:
    """The answer completion scored by the ``logistic`` objective (the agent's own answer format)."""
    return f"<answer>\\boxed{{{choice}}}</answer><|im_end|>"


def choice_margins(model, prompts: list[list[int]], answer_ids: dict[str, list[int]], correct: list[str],
                   temperature: float = 1.0) -> torch.Tensor:
    """[P] s(correct) - s(other) with s(X) = log pi(answer X | prompt), the summed log-likelihood of the answer
    completion at ``temperature``; each prompt is encoded once for both answers (``policy.group_logprobs``)."""
    from agenticrec.policy import group_logprobs
    margins = []
    for prompt, right in zip(prompts, correct):
        wrong = "B" if right == "A" else "A"
        logp = group_logprobs(model, prompt, [answer_ids[right], answer_ids[wrong]], temperature)  # [2, L]
        margins.append(logp[0].sum() - logp[1].sum())
    return torch.stack(margins)
