"""The CPU preset's scripted expert: its trajectories are exactly what the rollout builds for the same actions,
its answer copies the last ordering line, and it follows its plan: the first tool always, each next one by a coin."""

import dataclasses
import random
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from agenticrec import warmstart
from agenticrec.agent import AgentConfig, Rollout
from agenticrec.engine import Engine
from agenticrec.policy import sft_loss
from agenticrec.preset import PresetToolbox
from agenticrec.tasks import LESS, MORE, PreferenceTask
from agenticrec.warmstart import (RANKING_TOOLS, WarmStartConfig, choice_task, copy_drill, expert_trajectory,
                                  first_option, follow_failure, option_drill, option_line, ordering_of,
                                  stratified_coins)
from test_agent import INSTANCE, ScriptedModel
from test_tools import FakeSASRec, tiny

CFG = AgentConfig(answer_length=5, temperature=0.0, max_turn_tokens=200, max_context=4000)


@pytest.fixture(scope="module")
def box():
    return PresetToolbox(tiny(), FakeSASRec(), enabled=("candidates_analyze", "get_similar_items",
                                                          "get_similar_users"))


@pytest.mark.parametrize("seed", range(8))
def test_expert_trajectory_is_what_the_rollout_builds(tokenizer, box, seed):
    plan = ("get_similar_items", "candidates_analyze")  # one call with an argument, then one without
    ids, mask = expert_trajectory(tokenizer, box.data, box, INSTANCE, CFG, random.Random(seed), plan, 1.0)
    [t] = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box, CFG).run([INSTANCE])
    assert (t.ids, t.mask) == (ids, mask)  # the same tokens, and mask 1 exactly where the rollout samples
    assert t.invalid_reason is None and t.tool_errors == 0
    copied = ordering_of(t.tool_calls[-1].observation)[:5]
    assert t.ranking == tuple(INSTANCE.candidates[n - 1] for n in copied)
    assert [c.name for c in t.tool_calls] == list(plan) and all(name in RANKING_TOOLS for name in plan)


def _expert_calls(tokenizer, box, n, rng, **kwargs):
    for _ in range(n):
        ids, mask = expert_trajectory(tokenizer, box.data, box, INSTANCE, CFG, rng, **kwargs)
        names = re.findall(r'"name": "(\w+)"', tokenizer.decode([i for i, m in zip(ids, mask) if m]))
        assert len(set(names)) == len(names)  # a second call is always another tool
        yield tuple(names)


def test_expert_consults_its_plan_in_order_each_further_tool_by_a_coin(tokenizer):
    box = PresetToolbox(tiny(), FakeSASRec(), enabled=("candidates_analyze", "get_session_behavior",
                                                          "get_similar_users"))
    first, second = WarmStartConfig.plan
    paths = Counter(_expert_calls(tokenizer, box, 1000, random.Random(0)))  # the defaults
    assert set(paths) == {(first,), (first, second)}
    assert abs(paths[(first, second)] / 1000 - WarmStartConfig.further_call) < 0.05, paths
    plan = ("candidates_analyze", "get_session_behavior", "get_similar_users")
    paths = Counter(_expert_calls(tokenizer, box, 1000, random.Random(1), plan=plan, further_call=0.5))
    # it stops at the first tool it skips: one tool 1/2, two 1/4, three 1/4
    assert set(paths) == {plan[:1], plan[:2], plan}
    assert all(abs(paths[plan[:n]] / 1000 - p) < 0.05 for n, p in ((1, 0.5), (2, 0.25), (3, 0.25))), paths


def test_stratified_coins_give_every_batch_exactly_its_share_in_random_places():
    rng, places = random.Random(0), Counter()
    for _ in range(300):
        coins = stratified_coins(20, 0.4, rng)
        assert sorted(coins) == [0.0] * 12 + [1.0] * 8
        places.update(i for i, c in enumerate(coins) if c)
    assert set(places) == set(range(20)) and max(places.values()) < 2 * min(places.values())
    assert stratified_coins(5, 0.0, rng) == [0.0] * 5 and stratified_coins(5, 1.0, rng) == [1.0] * 5
    assert sum(stratified_coins(7, 0.3, rng)) == 2.0  # round(2.1)


@pytest.mark.parametrize("invalid, calls, rate", [
    ({0, 1, 2, 3}, 1, 12 / 16),  # 4 invalid in the first 16: 60 / 64 < 0.95 whatever the rest, so it stops there
    ({0, 1, 2}, 2, 61 / 64),  # 3 in the first 16: the rest decides (61 / 64 >= 0.95)
    ({0, 1, 2, 40}, 2, 60 / 64),  # ... and here fails it
    (set(), 2, 1.0),
])
def test_gate_check_stops_after_its_first_quarter_only_when_the_gate_can_no_longer_pass(monkeypatch, invalid, calls,
                                                                                        rate):
    seen = []

    def fake_valid_rate(model, tokenizer, data, toolbox, instances, cfg):
        seen.append(list(instances))
        bad = [i for i in instances if i in invalid]
        return 1 - len(bad) / len(instances), {"bad_json": len(bad)} if bad else {}

    monkeypatch.setattr(warmstart, "valid_rate", fake_valid_rate)
    got, reasons = warmstart.gate_check(None, None, None, None, list(range(64)), CFG, 0.95)
    assert len(seen) == calls and seen[0] == list(range(16)) and sum(map(len, seen)) == (16 if calls == 1 else 64)
    assert got == pytest.approx(rate) and reasons == ({"bad_json": len(invalid)} if invalid else {})


def test_expert_skips_the_tools_of_its_plan_that_are_not_enabled(tokenizer, box):
    paths = Counter(_expert_calls(tokenizer, box, 50, random.Random(2), plan=("get_session_behavior",
                                                                               "get_similar_users"), further_call=1.0))
    assert paths == {("get_similar_users",): 50}  # get_session_behavior is not enabled in ``box``


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


def test_a_drill_over_one_size_draws_nothing_and_a_mix_draws_each_size():
    rng, untouched = random.Random(3), random.Random(3)
    assert [warmstart._drill_size((20,), rng) for _ in range(5)] == [20] * 5
    assert rng.random() == untouched.random()  # the default drill's random stream is unchanged
    drawn = Counter(warmstart._drill_size((20, 50), rng) for _ in range(400))
    assert set(drawn) == {20, 50} and 150 < drawn[50] < 250


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


def test_a_loss_over_parts_is_the_token_mean_of_their_sequences_together():
    """Parts padded on their own, weighted by their loss tokens: the same value and gradient as sft_loss over all
    the sequences at once (the first part has 2 loss tokens and the second 6, so an unweighted mean differs)."""
    import torch

    from test_grpo_update import tiny_model
    model = tiny_model(4)
    long_part = [([5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 1, 0, 1])]
    short_part = [([13, 14, 15], [0, 1, 1]), ([16, 17, 18, 19], [1, 1, 1, 1]), ([20, 21], [0, 1])]
    cpu = torch.device("cpu")
    grads = []
    for loss_of in (lambda: sft_loss(model, long_part + short_part, cpu),
                    lambda: warmstart.token_mean_nll(model, [long_part, [], short_part], cpu)):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (whole, whole_grads), (parts, parts_grads) = grads
    assert parts == pytest.approx(whole, rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(whole_grads, parts_grads))
    unweighted = (sft_loss(model, long_part, cpu) + sft_loss(model, short_part, cpu)).item() / 2
    assert abs(unweighted - whole) > 1e-3
    assert warmstart.token_mean_nll(model, [short_part], cpu).item() == sft_loss(model, short_part, cpu).item()


# ------------------------------------------------------------------------------------------------------------------
# A / B answers (the fine-tune before PPR)
# ------------------------------------------------------------------------------------------------------------------


def test_the_option_line_puts_the_option_to_answer_first():
    assert option_line("popularity", [2, 1], MORE) == "Options by popularity, MORE likely first:\n{B}, {A}"
    assert option_line("popularity", [2, 1], LESS) == "Options by popularity, LESS likely first:\n{A}, {B}"
    assert option_line("taste", [1, 2], LESS) == "Options by taste, LESS likely first:\n{B}, {A}"
    assert first_option("evidence\n" + option_line("taste", [1, 2], LESS)) == "B"
    assert first_option("evidence\nCandidates by popularity, best first: 2, 1") is None
    assert first_option("error: unknown tool 'x'") is None


def ab_task(direction: str) -> PreferenceTask:
    """INSTANCE's target (item 3) against item 2, as options A and B."""
    return PreferenceTask(INSTANCE.user, INSTANCE.history, 3 if direction == MORE else 2, [3, 2], INSTANCE.position,
                          "train", direction)


@pytest.mark.parametrize("seed", range(4))
def test_the_expert_answers_an_ab_question_with_the_option_its_last_line_puts_first(tokenizer, seed):
    """Co-occurrence with ann's history (0 1 7 4 2) in the train sequences: item 3 twice, item 2 four times
    (test_preset's hand count), so the expert names B (item 2) for MORE and A (item 3) for LESS when it consults
    co-occurrence alone. With the similar users' taste breaking ties the counts still decide: the same answers."""
    box = PresetToolbox(tiny(), FakeSASRec(), enabled=WarmStartConfig.plan)
    for direction, letter in ((MORE, "B"), (LESS, "A")):
        task = ab_task(direction)
        ids, mask = expert_trajectory(tokenizer, box.data, box, task, CFG, random.Random(seed))
        [t] = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box, CFG).run([task])
        assert (t.ids, t.mask) == (ids, mask) and t.invalid_reason is None
        assert t.tool_calls[0].name == "get_session_behavior"
        assert first_option(t.tool_calls[-1].observation) == letter
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]).endswith(
            f"<answer>\\boxed{{{letter}}}</answer><|im_end|>")
        assert follow_failure(t) is None and t.reward == (1.0 if letter == task.answer else 0.0)


def test_follow_failure_names_why_an_answer_does_not_follow_the_line():
    observed = lambda text: [SimpleNamespace(observation=text)]
    line = "evidence\n" + option_line("taste", [2, 1], MORE)  # B first
    trajectory = lambda ranking, calls, reason=None: SimpleNamespace(
        instance=ab_task(MORE), ranking=ranking, tool_calls=calls, invalid_reason=reason)
    assert follow_failure(trajectory((2,), observed(line))) is None  # item 2 is option B
    assert follow_failure(trajectory((3,), observed(line))) == "other_option"
    assert follow_failure(trajectory((2,), observed("error: bad json"))) == "no_option_line"
    assert follow_failure(trajectory((2,), [])) == "no_option_line"
    assert follow_failure(trajectory(None, observed(line), "unclosed_answer")) == "unclosed_answer"


@pytest.mark.parametrize("seed", range(5))
def test_option_drill_answers_with_its_lines_first_option(tokenizer, seed):
    ids, mask = option_drill(tokenizer, random.Random(seed))
    line = tokenizer.decode(ids).split("<tool_response>\n")[1].split("\n</tool_response>")[0]
    assert line.startswith("Options by ") and line.split("\n")[1] in ("{A}, {B}", "{B}, {A}")
    answer = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    first = line.split("\n")[1][1]  # "{B}, {A}" -> B
    assert answer == f"<think>I follow the last ranking.</think>\n<answer>\\boxed{{{first}}}</answer><|im_end|>"
    assert mask == sorted(mask)


def test_choice_task_asks_about_the_target_and_another_candidate_either_way():
    rng, seen = random.Random(0), Counter()
    for _ in range(400):
        task = choice_task(INSTANCE, rng)
        assert INSTANCE.target in task.candidates and len(set(task.candidates)) == 2
        other = next(c for c in task.candidates if c != INSTANCE.target)
        assert other in INSTANCE.candidates
        assert task.target == (INSTANCE.target if task.direction == MORE else other)
        assert (task.history, task.position, task.user) == (INSTANCE.history, INSTANCE.position, INSTANCE.user)
        seen[task.direction, task.candidates.index(INSTANCE.target), other] += 1
    assert len(seen) == 2 * 2 * 4  # both directions, the target at A and at B, each of the 4 other candidates


def test_the_expert_refuses_an_observation_without_the_line_it_copies(tokenizer, monkeypatch):
    """A cut or error observation has no line to copy: a clear error, not an answer of None."""
    box = PresetToolbox(tiny(), FakeSASRec(), enabled=WarmStartConfig.plan)
    monkeypatch.setattr(PresetToolbox, "observe", lambda self, tool, context, arguments, earlier=(): "evidence only")
    for task in (INSTANCE, ab_task(MORE)):
        with pytest.raises(ValueError, match="does not end with the line it copies: 'evidence only'"):
            expert_trajectory(tokenizer, box.data, box, task, CFG, random.Random(0))


def reasoning_only_replay(tokenizer, box, ids):
    """The reasoning-only rollout of INSTANCE by a model that writes ``ids``."""
    free = dataclasses.replace(CFG, use_tools=False)
    [t] = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box, free).run([INSTANCE])
    return t


def test_tool_free_answer_is_what_a_reasoning_only_rollout_builds_and_ranks_in_prompt_order(tokenizer, box):
    from benchmarks.tool_free import answer_ranks, prompt_order, tool_free_trajectory
    ids, mask = tool_free_trajectory(tokenizer, box.data, box, INSTANCE, CFG)  # CFG has tools: it disables them
    t = reasoning_only_replay(tokenizer, box, ids)
    assert (t.ids, t.mask) == (ids, mask) and t.invalid_reason is None and not t.tool_calls
    assert t.ranking == tuple(INSTANCE.candidates)  # answer_length 5 = all five, in the prompt's order
    assert "<tools>" not in tokenizer.decode(ids)  # the reasoning-only prompt: no tool schema
    far = dataclasses.replace(INSTANCE, candidates=[5, 6, 2, 4, 3])  # the target is candidate 5
    assert answer_ranks(box.data, [INSTANCE, far], prompt_order, 5) == [2, 5] == [t.rank, 5]
    assert answer_ranks(box.data, [INSTANCE, far], prompt_order, 4) == [2, None]


def test_title_overlap_order_by_hand(tokenizer, box):
    from benchmarks.tool_free import answer_ranks, title_overlap_order, title_words, tool_free_trajectory
    assert title_words("Mario Kart 8 - Wii U") == {"mario", "kart", "wii"}  # 3+ characters, lower-cased
    # history: Halo 3, Halo Reach, Doom Eternal, Forza Horizon, Mario Kart 8. Candidates and the words they share:
    # [1] Zelda Breath of the Wild 0, [2] Super Mario Odyssey 1 (mario), [3] Tetris 0, [4] Mario Kart 8 2,
    # [5] Forza Horizon 2; ties keep the prompt's order
    assert title_overlap_order(box.data, INSTANCE) == [4, 5, 2, 1, 3]
    assert answer_ranks(box.data, [INSTANCE], title_overlap_order, 5) == [3]  # the target, Super Mario Odyssey
    assert answer_ranks(box.data, [INSTANCE], title_overlap_order, 2) == [None]
    ids, _ = tool_free_trajectory(tokenizer, box.data, box, INSTANCE, CFG, title_overlap_order)
    t = reasoning_only_replay(tokenizer, box, ids)
    assert t.ranking == (2, 4, 3, 5, 6) and t.rank == 3  # the items of candidates 4, 5, 2, 1, 3


def test_popularity_first_by_hand(tokenizer, box):
    from benchmarks.tool_free import ANSWERS, answer_ranks, tool_free_trajectory
    label, make = ANSWERS["popularity-first"]
    popularity_first = make(box.data)  # train counts of items 0-7: 3 2 2 1 1 1 0 2 (test_tools)
    # candidates [1]-[5] are items 5 3 6 2 4, counted 1 1 0 2 1: [4] first, the rest in the prompt's order
    assert popularity_first(box.data, INSTANCE) == [4, 1, 2, 3, 5]
    assert answer_ranks(box.data, [INSTANCE], popularity_first, 5) == [3]  # the target, item 3, is candidate [2]
    tied = dataclasses.replace(INSTANCE, candidates=[4, 1, 7, 3, 6])  # counted 1 2 2 1 0: the earlier of [2], [3]
    assert popularity_first(box.data, tied) == [2, 1, 3, 4, 5]
    ids, _ = tool_free_trajectory(tokenizer, box.data, box, INSTANCE, CFG, popularity_first)
    t = reasoning_only_replay(tokenizer, box, ids)
    assert t.ranking == (2, 5, 3, 6, 4) and t.rank == 3 and label == "popularity first"


def test_rehearsal_data_is_the_valid_trajectories_ids_and_masks(tokenizer, box):
    from agenticrec.trainer import rehearsal_data
    ids, mask = expert_trajectory(tokenizer, box.data, box, INSTANCE, CFG, random.Random(0),
                                  ("candidates_analyze",), 1.0)
    rollout = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box,
                      dataclasses.replace(CFG, temperature=1.0))
    shorter = dataclasses.replace(INSTANCE, history=INSTANCE.history[1:])  # another prompt: the script misfits
    [misfit] = rollout.run([shorter])
    assert misfit.invalid_reason is not None
    assert rehearsal_data(rollout, [INSTANCE, shorter, INSTANCE], cap=2) == [(ids, mask), (ids, mask)]


def test_grpo_without_tools_is_the_saved_stage_1_recipe_with_only_the_tools_disabled():
    from agenticrec import distributed as D
    from agenticrec.trainer import Objective, Sampling, TrainingConfig, agent_config
    from benchmarks.tool_free import without_tools
    settings = {**dataclasses.asdict(TrainingConfig()), "batch_size": 16, "group_size": 4, "temperature": 0.6,
                "tools": "get_session_behavior,get_similar_users"}
    saved, run, info = dict(settings), without_tools(settings), D.DistInfo(0, 1, 0, None, None)
    assert settings == saved  # the checkpoint's own settings are not changed
    with_tools = SimpleNamespace(**settings)
    assert agent_config(with_tools).use_tools and not agent_config(run).use_tools
    assert agent_config(run) == dataclasses.replace(agent_config(with_tools), use_tools=False)
    assert agent_config(run).temperature == 0.6
    assert Sampling.of(run, info) == Sampling.of(with_tools, info) and Objective.of(run) == Objective.of(with_tools)
