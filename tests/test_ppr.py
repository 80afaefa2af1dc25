"""PPR: Proposition 4.2 (hypothesis), the logistic loss through a real tiny model, mining on hand-built rankings,
balanced A / B tasks, and A / B rollouts scored 1 / 0 / invalid."""

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agenticrec.agent import AgentConfig, Rollout
from agenticrec.data import Instance
from agenticrec.engine import Engine
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.ppr import (Pair, answer_text, bidirectional_loss, bidirectional_tasks, choice_margins, mine_pairs,
                            random_pairs, read_pairs, violation_pool, write_pairs)
from agenticrec.tasks import LESS, MORE, PreferenceTask
from agenticrec.tools import Toolbox
from test_agent import ScriptedModel, encode, script_for
from test_tools import FakeSASRec, tiny

finite = st.floats(-60, 60, allow_nan=False)


def same_score_loss(ds: float) -> float:
    d = torch.tensor([ds], dtype=torch.float64)
    return float(bidirectional_loss(d, d)[0])  # one score s for both directions: d_MORE = d_LESS = ds


@given(finite)
def test_prop_4_2_closed_form(ds):
    assert same_score_loss(ds) == pytest.approx(2 * math.log1p(math.exp(-ds)), abs=1e-9, rel=1e-12)


@given(finite)
def test_prop_4_2_bounds_the_pairwise_error(ds):
    assert same_score_loss(ds) >= 2 * math.log(2) * (ds < 0) - 1e-12


@given(finite, finite)
def test_per_direction_bound_without_a_shared_score(d_more, d_less):
    """Without s_LESS = -s the margins are free, and each direction's term is >= log 2 exactly when its A / B
    judgement is wrong: L >= log 2 * (number of wrong judgements of the pair), the bound Prop 4.2 gives per task."""
    loss, metrics = bidirectional_loss(torch.tensor([d_more], dtype=torch.float64),
                                       torch.tensor([d_less], dtype=torch.float64))
    wrong = (d_more <= 0) + (d_less <= 0)
    assert loss.item() >= math.log(2) * wrong - 1e-12
    assert metrics["accuracy"] == 1 - wrong / 2


@given(st.floats(0.0, 60), st.floats(0.0, 60))
def test_prop_4_2_bounds_the_a_b_judgements_not_the_list(d_more, d_less):
    """What the bound does NOT cover: the loss is a function of the pair's two A / B margins only. With both
    judgements right (margins > 0) it falls below 2 log 2 towards 0, while the ranking the pair was mined from (a
    different answer to a different prompt) still puts c- above c+: the same violation is mined from it again."""
    loss, metrics = bidirectional_loss(torch.tensor([d_more + 1e-3], dtype=torch.float64),
                                       torch.tensor([d_less + 1e-3], dtype=torch.float64))
    assert metrics["accuracy"] == 1.0 and loss.item() < 2 * math.log(2)
    [pair], _ = mine_pairs([trajectory(4, (2, 4, 1))], seed=0)
    assert (pair.positive, pair.negative, pair.negative_rank, pair.target_rank) == (4, 2, 1, 2)


@given(finite, st.floats(1e-3, 1.0))
def test_prop_4_2_is_convex(ds, h):
    assert same_score_loss(ds - h) + same_score_loss(ds + h) - 2 * same_score_loss(ds) >= -1e-12


@given(st.floats(-60, -10))
def test_prop_4_2_gradient_does_not_vanish_on_violations(ds):
    d = torch.tensor([ds], dtype=torch.float64, requires_grad=True)
    loss, _ = bidirectional_loss(d, d)
    loss.backward()
    assert d.grad.item() == pytest.approx(-2 * torch.sigmoid(-d).item()) and d.grad.item() < -1.99


def test_unidirectional_loss_and_accuracy():
    loss, m = bidirectional_loss(torch.tensor([2.0, -1.0, 0.5]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) +
                                         math.log1p(math.exp(-0.5))) / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)  # the margins > 0: c+ preferred


def test_bidirectional_loss_and_accuracy_by_hand():
    more, less = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    loss, m = bidirectional_loss(more, less)
    terms = [math.log1p(math.exp(-d)) for d in (1.0, -2.0, 3.0, 0.5)]
    assert loss.item() == pytest.approx((terms[0] + terms[2] + terms[1] + terms[3]) / 2)  # a mean over pairs
    assert m["accuracy"] == pytest.approx(3 / 4) and m["loss"] == pytest.approx(loss.item())


def test_logistic_loss_through_the_model_equals_the_formula(tokenizer):
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8)).double().eval()
    prompts = [encode(tokenizer, "user: which one? assistant:"), encode(tokenizer, "another context, longer one")]
    answers = {c: encode(tokenizer, answer_text(c)) for c in "AB"}

    def loglik(prompt, answer):  # independent: one full forward over prompt + answer
        ids = torch.tensor([prompt + answer])
        logp = model(ids).double().log_softmax(-1)[0, len(prompt) - 1:-1]
        return logp.gather(-1, torch.tensor(answer)[:, None]).sum()

    correct_more, correct_less = ["A", "B"], ["B", "A"]
    with torch.no_grad():
        more = choice_margins(model, prompts, answers, correct_more)
        less = choice_margins(model, prompts, answers, correct_less)
        loss, _ = bidirectional_loss(more, less)
        expected = [loglik(p, answers[r]) - loglik(p, answers[w]) for p, r, w in zip(prompts, correct_more, "BA")]
        expected_less = [loglik(p, answers[r]) - loglik(p, answers[w]) for p, r, w in zip(prompts, correct_less, "AB")]
    # the training path scores in float32 (log-softmax of .float() logits), the reference in float64: a margin sums
    # ~15 tokens' float32 log-probs (rounding ~1e-5 on some CPUs); a sign or token error is of the margin's size (~0.1)
    torch.testing.assert_close(more.double(), torch.stack(expected), rtol=0, atol=5e-5)
    formula = sum(math.log1p(math.exp(-float(d))) for d in expected + expected_less) / 2
    assert loss.item() == pytest.approx(formula, abs=5e-5)


def trajectory(target, ranking):
    return SimpleNamespace(instance=Instance("u", [9, 8], target, [1, 2, 3, 4, 5], position=2), ranking=ranking)


def test_violation_pool_is_exactly_as_defined():
    assert violation_pool((4, 2, 7, 1), target=7) == [4, 2]  # the items ranked above the target
    assert violation_pool((4, 2, 7, 1), target=9) == [4, 2, 7, 1]  # target absent: the whole top-K
    assert violation_pool((7, 4, 2), target=7) is None  # target first: no violation


@settings(max_examples=200)
@given(st.permutations(range(1, 11)), st.integers(1, 12), st.integers(0, 10**6))
def test_negative_is_never_the_target_and_comes_from_the_pool(order, target, seed):
    pairs, stats = mine_pairs([trajectory(target, tuple(order)), trajectory(3, None)], seed)
    assert stats["invalid_skipped"] == 1
    pool = violation_pool(tuple(order), target)
    if pool is None:
        assert pairs == []
        return
    [pair] = pairs
    assert pair.negative != pair.positive == target and pair.negative in pool and pair.pool_size == len(pool)
    assert order[pair.negative_rank - 1] == pair.negative


def test_mining_statistics():
    trajectories = [trajectory(5, (5, 1, 2)), trajectory(5, (1, 2, 5)), trajectory(5, (1, 2, 3)), trajectory(5, None)]
    pairs, stats = mine_pairs(trajectories, seed=0)
    assert stats["violations"] == 2 and stats["violation_rate"] == pytest.approx(2 / 3)
    assert stats["pool_sizes"] == {2: 1, 3: 1} and stats["target_absent"] == 1 and stats["invalid_skipped"] == 1
    assert sum(stats["negative_ranks"].values()) == 2


def test_negatives_are_uniform_over_the_pool():
    pairs, _ = mine_pairs([trajectory(5, (1, 2, 3, 5))] * 3000, seed=1)
    counts = [sum(p.negative == i for p in pairs) for i in (1, 2, 3)]
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts)


@given(st.integers(0, 41), st.integers(0, 10**6))
def test_tasks_are_balanced_and_bidirectional(n, seed):
    pairs = [Pair("u", (1,), 1, positive=10 + i, negative=100 + i, negative_rank=1, target_rank=2, pool_size=1)
             for i in range(n)]
    tasks = bidirectional_tasks(pairs, seed)
    assert len(tasks) == 2 * n and [t.direction for t in tasks] == [MORE, LESS] * n
    positive_at_a = sum(t.candidates[0] == pairs[t.pair_index].positive for t in tasks if t.direction == MORE)
    assert positive_at_a == math.ceil(n / 2)
    for more, less in zip(tasks[::2], tasks[1::2]):
        pair = pairs[more.pair_index]
        assert more.candidates == less.candidates and more.target == pair.positive and less.target == pair.negative
    assert len(bidirectional_tasks(pairs, seed, unidirectional=True)) == n


def test_the_answer_is_the_letter_of_c_plus_for_more_and_of_c_minus_for_less():
    assert PreferenceTask("u", [1], 10, [20, 10], 1, "train", MORE).answer == "B"  # c+ = 10 sits at B
    assert PreferenceTask("u", [1], 20, [20, 10], 1, "train", LESS).answer == "A"  # c- = 20 sits at A
    pairs = [Pair("u", (1,), 1, positive=10 + i, negative=100 + i, negative_rank=1, target_rank=2, pool_size=1)
             for i in range(7)]
    for task in bidirectional_tasks(pairs, seed=5):
        positive_at_a = task.candidates[0] == pairs[task.pair_index].positive
        assert task.answer == ("A" if positive_at_a == (task.direction == MORE) else "B")


def test_random_negatives_and_the_pairs_file(tmp_path):
    instances = [Instance("u", [1, 2], 3, [4, 3, 5], position=2)] * 50
    pairs = random_pairs(instances, seed=0)
    assert {p.negative for p in pairs} == {4, 5}
    write_pairs(tmp_path / "pairs.jsonl", pairs, {"violations": 50})
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs
    (tmp_path / "bad.jsonl").write_text('{"user": "u"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a mined pair"):
        read_pairs(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("answer, reward", [("A", 1.0), ("B", 0.0), ("C", -1.0)])
def test_ab_rollouts_score_one_zero_or_invalid(tokenizer, answer, reward):
    box = Toolbox(tiny(), FakeSASRec())
    cfg = AgentConfig(temperature=0.0, max_turn_tokens=200, max_context=4000)
    task = PreferenceTask("ann", [0, 1, 7], 3, [3, 5], 3, "valid", MORE)  # c+ = item 3 at A
    text = f"<think>ok</think>\n<answer>\\boxed{{{answer}}}</answer><|im_end|>"
    ids, _ = script_for(tokenizer, box, [("text", text)], cfg, task)
    [t] = Rollout(Engine(ScriptedModel(ids, len(tokenizer)), 4000), tokenizer, box.data, box, cfg).run([task])
    assert t.reward == reward and (t.invalid_reason is None) == (answer != "C")
    prompt = tokenizer.decode(t.ids[:t.prompt_len])
    assert "A. Super Mario Odyssey\nB. Zelda Breath of the Wild" in prompt and "MORE likely" in prompt
