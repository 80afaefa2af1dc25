"""Percentile bootstrap confidence intervals: of one system's mean, and of a paired difference."""

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
    ci = bootstrap_ci(b - a, samples, seed, level)  # resampling the differences keeps each pair together
    return {"diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"]}


def bootstrap_ci(values: Sequence[float], samples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean of per-instance ``values`` and its percentile bootstrap CI (instances resampled with replacement).

    For a 0/1 metric such as H@1 on n instances this approximates mean +- 1.96 sqrt(p(1-p)/n); the percentile
    interval needs no normality assumption and is what docs/evaluation.md reports for every metric.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty list of numbers, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 1000):  # chunks bound the index matrix at 1000 x n
        stop = min(samples, start + 1000)
        means[start:stop] = x[rng.integers(0, len(x), size=(stop - start, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": len(x)}
