"""The CPU preset's scripted expert: its trajectories are exactly what the rollout builds for the same actions,
its answer copies the last ordering line, and it consults two tools, in every order alike."""

import random
import re
from collections import Counter

import pytest

from agenticrec.agent import AgentConfig, Rollout
from agenticrec.engine import Engine
from agenticrec.policy import sft_loss
from agenticrec.preset import PresetToolbox
from agenticrec.warmstart import RANKING_TOOLS, copy_drill, expert_trajectory, ordering_of
from test_agent import INSTANCE, ScriptedModel
from test_tools import FakeSASRec, tiny

CFG = AgentConfig(answer_length=5, temperature=0.0, max_turn_tokens=200, max_context=4000)


@pytest.fixture(scope="module")
def box():
    return PresetToolbox(tiny(), FakeSASRec(), enabled=("candidates_analyze", "get_similar_items",
                                                          "get_similar_users"))


@pytest.mark.parametrize("seed", range(8))
def test_expert_trajectory_is_what_the_rollout_builds(tokenizer, box, seed):
    ids, mask = expert_trajectory(tokenizer, box.data, box, INSTANCE, CFG, random.Random(seed))
    [t] = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box, CFG).run([INSTANCE])
    assert (t.ids, t.mask) == (ids, mask)  # the same tokens, and mask 1 exactly where the rollout samples
    assert t.invalid_reason is None and t.tool_errors == 0
    copied = ordering_of(t.tool_calls[-1].observation)[:5]
    assert t.ranking == tuple(INSTANCE.candidates[n - 1] for n in copied)
    assert t.tool_calls[-1].name in RANKING_TOOLS and len(t.tool_calls) == 2


def _expert_calls(tokenizer, box, n, rng, **kwargs):
    for _ in range(n):
        ids, mask = expert_trajectory(tokenizer, box.data, box, INSTANCE, CFG, rng, **kwargs)
        names = re.findall(r'"name": "(\w+)"', tokenizer.decode([i for i, m in zip(ids, mask) if m]))
        assert len(set(names)) == len(names)  # a second call is always another tool
        yield tuple(names)


def test_expert_consults_two_tools_in_every_order_alike(tokenizer):
    box = PresetToolbox(tiny(), FakeSASRec(), enabled=("candidates_analyze", "get_session_behavior",
                                                          "get_similar_users"))
    paths = Counter(_expert_calls(tokenizer, box, 900, random.Random(0)))  # WarmStartConfig.second_call: 1
    assert len(paths) == 6 and all(len(path) == 2 for path in paths)  # 3 tools: 6 ordered pairs
    assert all(abs(count / 900 - 1 / 6) < 0.04 for count in paths.values()), paths


def test_with_second_call_one_half_the_expert_consults_one_tool_half_the_time(tokenizer, box):
    paths = Counter(_expert_calls(tokenizer, box, 900, random.Random(1), second_call=0.5))
    singles = {path: count for path, count in paths.items() if len(path) == 1}
    assert sorted(path[0] for path in singles) == sorted(box.names)
    assert abs(sum(singles.values()) / 900 - 0.5) < 0.05
    assert all(abs(count / 900 - 1 / 6) < 0.04 for count in singles.values()), singles  # each tool alike


def test_expert_needs_a_ranking_tool(tokenizer):
    profile_only = PresetToolbox(tiny(), FakeSASRec(), enabled=("get_user_profile",))
    with pytest.raises(ValueError, match="needs one of the ranking tools"):
        expert_trajectory(tokenizer, profile_only.data, profile_only, INSTANCE, CFG, random.Random(0))


@pytest.mark.parametrize("seed", range(5))
def test_copy_drill_answers_with_the_top_k_of_its_ordering(tokenizer, seed):
    ids, mask = copy_drill(tokenizer, random.Random(seed), num_candidates=12, k=7)
    text = tokenizer.decode(ids)
    order = ordering_of(text.split("<tool_response>\n")[1].split("\n</tool_response>")[0])
    assert sorted(order) == list(range(1, 13))
    answer = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert answer == f"<think>I follow the last ranking.</think>\n<answer>\\boxed{{{order[:7]}}}</answer><|im_end|>"
    assert mask == sorted(mask)  # observation (mask 0) first, then only the sampled answer turn (mask 1)


def test_sft_loss_is_the_mean_nll_of_the_sampled_tokens():
    """The warm start's and PPR rehearsal's loss: -sum_j mask[j] log pi(ids[j] | ids[:j]) / sum_j mask[j] over
    the batch (j >= 1), each sequence scored alone without padding."""
    import torch

    from test_grpo_update import tiny_model
    model = tiny_model(3)
    batch = [([5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 0, 1]), ([11, 12, 13], [0, 1, 1])]
    loss = sft_loss(model, batch, torch.device("cpu"))
    total, count = 0.0, 0
    for ids, mask in batch:
        logp = model(torch.tensor([ids]))[0, :-1].detach().float().log_softmax(-1)
        for j in range(1, len(ids)):
            if mask[j]:
                total, count = total - float(logp[j - 1, ids[j]]), count + 1
    assert count == 5 and loss.item() == pytest.approx(total / count, rel=1e-5)
