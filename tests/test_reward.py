"""Every branch of the reward with hand-computed values, and the metrics' properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenticrec.reward import RewardConfig, hit_at, ndcg_at, rank_of, ranking_metrics, reward

RANKING = [8, 3, 15, 1, 20, 2, 4, 5, 6, 7]


@pytest.mark.parametrize("ranking, target, tools, expected", [
    (RANKING, 8, 2, 1.0 + 0.1),  # first, with tools: NDCG 1/log2(2) = 1, plus the bonus
    (RANKING, 8, 0, 1.0),  # first, no tool call: no bonus
    (RANKING, 3, 1, 1 / math.log2(3)),  # second: 0.6309...
    (RANKING, 7, 1, 1 / math.log2(11)),  # tenth: 0.2890...
    (RANKING, 19, 3, -0.5),  # valid, misses
    (None, 8, 3, -1.0),  # invalid
])
def test_reward_branches(ranking, target, tools, expected):
    assert reward(ranking, target, tools) == pytest.approx(expected, abs=1e-12)


def test_reward_constants_are_options():
    cfg = RewardConfig(k=2, miss=-0.25, invalid=-2.0, first_with_tools_bonus=0.5)
    assert reward(RANKING, 8, 1, cfg) == 1.5
    assert reward(RANKING, 15, 1, cfg) == -0.25  # rank 3 is beyond k = 2: a miss
    assert reward(None, 8, 1, cfg) == -2.0


def test_metrics_by_hand():
    assert rank_of(RANKING, 15) == 3 and rank_of(RANKING, 99) is None
    assert ranking_metrics(3) == {"H@1": 0.0, "H@5": 1.0, "H@10": 1.0, "N@5": 0.5, "N@10": 0.5}
    assert ranking_metrics(7) == pytest.approx({"H@1": 0.0, "H@5": 0.0, "H@10": 1.0, "N@5": 0.0, "N@10": 1 / 3})
    assert ranking_metrics(None) == {"H@1": 0.0, "H@5": 0.0, "H@10": 0.0, "N@5": 0.0, "N@10": 0.0}
    assert ranking_metrics(1)["N@10"] == ranking_metrics(1)["H@1"] == 1.0


@given(rank=st.one_of(st.none(), st.integers(1, 100)), k=st.integers(1, 50))
def test_ndcg_in_unit_interval_and_hit_monotone_in_k(rank, k):
    assert 0.0 <= ndcg_at(rank, k) <= 1.0
    assert hit_at(rank, k) <= hit_at(rank, k + 1)
    assert ndcg_at(rank, k) <= ndcg_at(rank, k + 1)
