"""Non-LLM rankers over the fixed instances, all learned from the TRAIN split only.

- random: the shuffled candidate order;
- popularity: train interaction counts;
- co-occurrence: how often each candidate appears within +-window positions of a history item in train sequences;
- SASRec: ``agenticrec.sasrec.score_candidates``.
Ties are broken by popularity, then by the (random) candidate order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from agenticrec.data import Dataset, Instance, training_sequences
from agenticrec.reward import rank_of, ranking_metrics

Scorer = Callable[[list[Instance]], list[list[float]]]


def popularity(data: Dataset) -> np.ndarray:
    """[num_items] train interaction counts."""
    counts = np.zeros(len(data.items), dtype=np.int64)
    for seq in training_sequences(data):
        np.add.at(counts, seq, 1)
    return counts


def cooccurrence(data: Dataset, window: int = 3) -> dict[int, Counter]:
    """item -> Counter of items seen within +-window positions of it in some train sequence."""
    neighbours: dict[int, Counter] = defaultdict(Counter)
    for seq in training_sequences(data):
        for i, item in enumerate(seq):
            for other in seq[max(0, i - window):i] + seq[i + 1:i + 1 + window]:
                if other != item:
                    neighbours[item][other] += 1
    return neighbours


def random_scorer(instances: list[Instance]) -> list[list[float]]:
    """The shuffled candidate order itself (distinct scores, so no tie-break applies)."""
    return [[-float(j) for j in range(len(x.candidates))] for x in instances]


def popularity_scorer(data: Dataset) -> Scorer:
    counts = popularity(data)
    return lambda instances: [[float(counts[c]) for c in x.candidates] for x in instances]


def cooccurrence_scorer(data: Dataset, window: int = 3) -> Scorer:
    neighbours = cooccurrence(data, window)
    return lambda instances: [[float(sum(neighbours[h][c] for h in x.history)) for c in x.candidates]
                              for x in instances]


def rankings(instances: list[Instance], scores: list[list[float]], tiebreak: np.ndarray) -> list[list[int]]:
    """Candidates ordered best first: by score, then popularity, then candidate order."""
    out = []
    for x, row in zip(instances, scores):
        order = sorted(range(len(x.candidates)), key=lambda j: (-row[j], -tiebreak[x.candidates[j]], j))
        out.append([x.candidates[j] for j in order])
    return out


def target_ranks(data: Dataset, instances: list[Instance], scorer: Scorer) -> list[int | None]:
    """1-based rank of each instance's target in the scorer's order (``rankings``); None when the target is not
    among the candidates (a shortlist dropped it)."""
    ranked = rankings(instances, scorer(instances), popularity(data))
    return [rank_of(r, x.target) for x, r in zip(instances, ranked)]


def evaluate_scorer(data: Dataset, instances: list[Instance], scorer: Scorer) -> dict[str, float]:
    """Mean HR@1/5/10 and NDCG@5/10 of a scorer over instances."""
    rows = [ranking_metrics(r) for r in target_ranks(data, instances, scorer)]
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
