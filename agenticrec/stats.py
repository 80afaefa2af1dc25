"""Paired bootstrap confidence intervals for metric differences on the same instances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of b - a and its percentile bootstrap CI, resampling INSTANCES (the pairs stay together).

    ``a`` and ``b`` are per-instance metrics of two systems on the same instances, in the same order. The CI
    excludes 0 when ``lo > 0`` (b better) or ``hi < 0`` (a better).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty lists, got {a.shape} and {b.shape}")
    diff = b - a
    index = np.random.default_rng(seed).integers(0, len(diff), size=(samples, len(diff)))
    means = diff[index].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": len(diff)}
