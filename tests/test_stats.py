"""Paired bootstrap: exact on a constant difference, centred on the mean difference, seeded, and pairs matter."""

import numpy as np
import pytest

from agenticrec.stats import paired_bootstrap


def test_constant_difference_has_a_zero_width_interval():
    a = np.random.default_rng(0).random(200)
    out = paired_bootstrap(a, a + 0.1)
    assert out["diff"] == pytest.approx(0.1) and out["lo"] == pytest.approx(0.1) and out["hi"] == pytest.approx(0.1)


def test_interval_brackets_the_mean_and_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.random(1000), rng.random(1000)
    out = paired_bootstrap(a, b, samples=20_000)
    half = 1.96 * (b - a).std() / np.sqrt(1000)
    assert out["lo"] < out["diff"] < out["hi"]
    assert out["hi"] - out["lo"] == pytest.approx(2 * half, rel=0.05)
    assert paired_bootstrap(a, b, samples=20_000) == out  # seeded


def test_pairing_narrows_the_interval_for_correlated_systems():
    rng = np.random.default_rng(2)
    a = rng.random(500)
    b = a + rng.normal(0.02, 0.01, 500)  # b is a, slightly better: obvious only when the pairs stay together
    assert paired_bootstrap(a, b)["lo"] > 0
    unpaired = paired_bootstrap(a, rng.permutation(b))
    assert unpaired["lo"] < 0 < unpaired["hi"]


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([], [])
