"""The paper's list-wise reward and the ranking metrics (a single positive per instance).

    NDCG@K = 1 / log2(rank + 1) if the target is at rank <= K (1-based), else 0;   HR@K = 1[rank <= K]

    R = NDCG@10(ranking)            valid answer that contains the target
        -0.5                        valid answer that misses it
        -1                          invalid: bad format, index out of range, duplicates, unknown tool,
                                    tool budget exceeded, truncated
        + 0.1                       bonus when the target is ranked first AND at least one tool was called

Source: AgenticRec (arXiv 2603.21613), stage 1 (../shared/paper.md, "Reward"). Each constant is a field of
``RewardConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RewardConfig:
    k: int = 10  # NDCG cut-off of the reward
    miss: float = -0.5  # valid answer without the target
    invalid: float = -1.0  # invalid answer or budget exceeded
    first_with_tools_bonus: float = 0.1  # target ranked first and >= 1 tool call


def rank_of(ranking: Sequence[int], target: int) -> int | None:
    """1-based rank of the target in the ranking, None when absent."""
    for rank, item in enumerate(ranking, 1):
        if item == target:
            return rank
    return None


def ndcg_at(rank: int | None, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def hit_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reward(ranking: Sequence[int] | None, target: int, num_tool_calls: int, cfg: RewardConfig = RewardConfig()) -> float:
    """The stage-1 reward of one trajectory; ``ranking`` None means the trajectory was invalid."""
    if ranking is None:
        return cfg.invalid
    rank = rank_of(ranking, target)
    if rank is None or rank > cfg.k:
        return cfg.miss
    bonus = cfg.first_with_tools_bonus if rank == 1 and num_tool_calls > 0 else 0.0
    return ndcg_at(rank, cfg.k) + bonus


def ranking_metrics(rank: int | None) -> dict[str, float]:
    """The paper's table columns for one instance: HR@1/5/10 and NDCG@5/10 (H@1 = N@1)."""
    return {"H@1": hit_at(rank, 1), "H@5": hit_at(rank, 5), "H@10": hit_at(rank, 10),
            "N@5": ndcg_at(rank, 5), "N@10": ndcg_at(rank, 10)}
