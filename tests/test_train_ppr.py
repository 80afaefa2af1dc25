"""train_ppr.py's mechanics on a tiny random policy: both objectives run end to end, resume is bit-exact, the
report has every field. (A random policy's rollouts are all invalid, so pairs come from random negatives.)"""

import json
import math

import pytest
import torch

import train_ppr
from agenticrec import preset
from agenticrec.data import Instance, load_dataset, load_instances, split_instances
from agenticrec.model import Qwen3, load_pretrained
from agenticrec.policy import sft_loss
from agenticrec.ppr import random_pairs, read_pairs
from agenticrec.tasks import LESS, MORE
from agenticrec.trainer import size_breakdown
from agenticrec.warmstart import ChoiceStartConfig
from grpo_fakes import tiny_config, tiny_policy_folder, worker_weights
from test_grpo_update import SINGLE

SMALL = ["--dataset", "beauty2023", "--batch-size", "4", "--group-size", "2", "--max-turn-tokens", "8",
         "--max-context", "4096", "--eval-instances", "4", "--tools", "get_user_profile", "--threads", "1",
         "--lr", "1e-2", "--warmup-steps", "2", "--mine-instances", "12",
         "--valid-mine-instances", "6", "--eval-chunk", "8"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy_folder(tmp_path_factory.mktemp("policy"))


@pytest.fixture(autouse=True)
def random_mining(monkeypatch):
    """Mining needs valid answers, which a random policy never gives: draw the negatives at random instead."""
    def mine(rollout, instances, cfg, info, path, split):
        pairs = random_pairs(instances, cfg.seed)
        train_ppr.write_pairs(path, pairs, {"violations": len(pairs)})
        return pairs, {"violations": len(pairs), "violation_rate": 1.0}
    monkeypatch.setattr(train_ppr, "mine", mine)


def test_logistic_resume_is_bit_exact_and_the_report_is_complete(policy, tmp_path):
    args = ["--model", str(policy), *SMALL, "--objective", "logistic", "--steps", "4", "--checkpoint-every", "2"]
    train_ppr.main(args + ["--out", str(tmp_path / "straight")])
    train_ppr.main(args + ["--out", str(tmp_path / "resumed"), "--stop-after", "2"])
    train_ppr.main(args + ["--out", str(tmp_path / "resumed"), "--resume"])
    straight, resumed = (load_pretrained(tmp_path / r / "final").state_dict() for r in ("straight", "resumed"))
    start = load_pretrained(policy).state_dict()
    assert any(not torch.equal(straight[k], start[k]) for k in start)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"loss", "margin_accuracy", "grad_norm", "lr"} <= r.keys() for r in records)
    report = json.loads((tmp_path / "straight" / "report.json").read_text())
    for row in report["rows"].values():
        assert {"before", "after", "diff", "lo", "hi", "n"} <= row.keys()
    assert len(read_pairs(tmp_path / "straight" / "pairs_train.jsonl")) == 12
    assert (tmp_path / "straight" / "final" / "tokenizer.json").is_file()


def test_grpo_objective_runs_the_stage_1_update(policy, tmp_path):
    train_ppr.main(["--model", str(policy), *SMALL, "--steps", "2", "--out", str(tmp_path), "--unidirectional"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward", "valid", "zero_std_groups", "kl", "clip_frac", "dropped_groups", "calls_get_user_profile"):
        assert key in records[0], key
    assert records[0]["n"] >= 4 and records[0]["valid"] == 0.0  # random policy: invalid A / B answers, reward -1


def test_pairs_from_reuses_an_earlier_runs_pairs(policy, tmp_path, monkeypatch):
    args = ["--model", str(policy), *SMALL, "--objective", "logistic", "--steps", "1"]
    train_ppr.main(args + ["--out", str(tmp_path / "first"), "--seed", "1"])
    monkeypatch.setattr(train_ppr, "mine", lambda *a: pytest.fail("--pairs-from must not mine"))
    train_ppr.main(args + ["--out", str(tmp_path / "second"), "--pairs-from", str(tmp_path / "first")])
    for split in ("train", "valid"):
        assert read_pairs(tmp_path / "second" / f"pairs_{split}.jsonl") == \
            read_pairs(tmp_path / "first" / f"pairs_{split}.jsonl")
    with pytest.raises(SystemExit, match="pairs_train.jsonl is missing"):
        train_ppr.main(args + ["--out", str(tmp_path / "third"), "--pairs-from", str(tmp_path / "nowhere")])


def test_mining_draws_on_every_train_candidate_size_interleaved(policy, tmp_path, monkeypatch):
    """The train list ``mine`` receives; the rehearsal data is the head of the same list (``build_tasks``)."""
    class Mined(Exception):
        pass

    def mine(rollout, instances, cfg, info, path, split):
        raise Mined(instances)
    monkeypatch.setattr(train_ppr, "mine", mine)
    with pytest.raises(Mined) as mined:
        train_ppr.main(["--model", str(policy), *SMALL, "--train-candidates", "20,50", "--out", str(tmp_path)])
    instances = mined.value.args[0]
    assert [len(x.candidates) for x in instances] == [20, 50] * 6  # --mine-instances 12
    fixed = load_instances("beauty2023", "train")
    assert instances[0::2] == fixed[:6] and instances[1::2] != fixed[:6]
    assert instances[1::2] == split_instances(load_dataset("beauty2023"), "train", 50)[:6]


def test_the_ranking_is_evaluated_on_every_size_stage_1_was(policy, tmp_path, monkeypatch):
    """The instances the before-training evaluation ranks: the first --eval-instances of each size, interleaved."""
    class Evaluated(Exception):
        pass

    def evaluation(run, probes, valid_instances, step):
        raise Evaluated(valid_instances)
    monkeypatch.setattr(train_ppr, "evaluation", evaluation)
    with pytest.raises(Evaluated) as evaluated:
        train_ppr.main(["--model", str(policy), *SMALL, "--eval-candidates", "20,50", "--out", str(tmp_path)])
    instances = evaluated.value.args[0]
    assert [len(x.candidates) for x in instances] == [20, 50] * 4  # --eval-instances 4 of each
    assert instances[0::2] == load_instances("beauty2023", "valid")[:4]
    assert instances[1::2] == split_instances(load_dataset("beauty2023"), "valid", 50)[:4]


def test_the_report_gives_the_ranking_of_each_size_by_hand(tmp_path, capsys):
    """Sizes 20, 50, 20, 50 with ranks before (1, 0, 3, 1) and after (1, 2, 1, 0): at N = 20 H@1 1/2 -> 1, N@10
    (1 + 1/2) / 2 -> 1; at N = 50 H@1 1/2 -> 0, N@10 1/2 -> 1/log2(3) / 2."""
    instances = [Instance("u", [1], 1, list(range(1, n + 1)), position=1) for n in (20, 50, 20, 50)]
    sizes = size_breakdown(instances, [1, 0, 3, 1], [1, 2, 1, 0])
    expected = {20: {"H@1": (0.5, 1.0), "N@10": (0.75, 1.0)},
                50: {"H@1": (0.5, 0.0), "N@10": (0.5, 0.5 / math.log2(3))}}
    assert sorted(sizes) == [20, 50] and all(sizes[n]["n"] == 2 for n in sizes)
    for n, metrics in expected.items():
        for k, (b, a) in metrics.items():
            assert (sizes[n][k]["before"], sizes[n][k]["after"], sizes[n][k]["diff"]) == pytest.approx((b, a, a - b))
    assert size_breakdown(instances[::2], [1, 3], [1, 1]) == {}  # one size: the overall rows are that size's
    with pytest.raises(ValueError, match="3 values for 4 instances"):
        size_breakdown(instances, [1, 0, 3], [1, 2, 1])
    saved = train_ppr.report(tmp_path, REPORT_BEFORE, REPORT_AFTER, {"violations": 1}, {"violations": 1}, None, sizes)
    assert saved["by_size"] == sizes
    assert "N = 50, 2 instances: H@1 0.500 (before) -> 0.000 (after), -0.5000 [" in capsys.readouterr().out


def test_unknown_objective_is_a_clear_error(policy):
    with pytest.raises(SystemExit, match="--objective must be grpo or logistic"):
        train_ppr.parse_args(["--model", str(policy), "--objective", "dpo"])


def test_rehearsal_adds_its_nll_and_resumes_bit_exact(policy, tmp_path, monkeypatch):
    """--replay-coef: each step adds the NLL of stage-1 ranking trajectories (here synthetic: a random policy has
    no valid ones), drawn per (seed, step, rank), so a resumed run is still bit-exact and the weights differ from a
    run without it."""
    synthetic = [([3 + (i * 7 + j) % 50 for j in range(30)], [0] * 20 + [1] * 10) for i in range(6)]
    monkeypatch.setattr(train_ppr, "replay_trajectories", lambda rollout, instances, cfg: synthetic)
    args = ["--model", str(policy), *SMALL, "--objective", "logistic", "--steps", "4", "--checkpoint-every", "2",
            "--replay-batch", "2"]
    train_ppr.main(args + ["--out", str(tmp_path / "plain")])
    train_ppr.main(args + ["--out", str(tmp_path / "straight"), "--replay-coef", "1.0"])
    train_ppr.main(args + ["--out", str(tmp_path / "resumed"), "--replay-coef", "1.0", "--stop-after", "2"])
    train_ppr.main(args + ["--out", str(tmp_path / "resumed"), "--replay-coef", "1.0", "--resume"])
    plain, straight, resumed = (load_pretrained(tmp_path / r / "final").state_dict()
                                for r in ("plain", "straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(straight[k], plain[k]) for k in plain)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["replay_nll"] > 0 for r in records)


def test_rehearsal_joins_the_grpo_objectives_update(policy, tmp_path, monkeypatch):
    """--replay-coef with the paper's objective. A random policy's A / B answers are all invalid (reward -1); with
    every group kept (neither all-equal nor all-negative groups dropped) the advantages are 0 and, the policy being
    its own reference, the KL gradient is 0 too. So without rehearsal the weights do not move, and with it they do."""
    synthetic = [([3 + (i * 7 + j) % 50 for j in range(30)], [0] * 20 + [1] * 10) for i in range(6)]
    monkeypatch.setattr(train_ppr, "replay_trajectories", lambda rollout, instances, cfg: synthetic)
    args = ["--model", str(policy), *SMALL, "--objective", "grpo", "--steps", "2", "--no-drop-all-equal",
            "--no-drop-all-negative", "--unidirectional", "--replay-batch", "2"]
    train_ppr.main(args + ["--out", str(tmp_path / "plain")])
    losses, update = [], train_ppr.update

    def recording_update(model, ref, optimizer, batch, objective, info, rehearsal=None):
        def recorded():  # the loss whose gradient the update adds
            loss = rehearsal()
            losses.append(float(loss))
            return loss
        return update(model, ref, optimizer, batch, objective, info, recorded if rehearsal else None)
    monkeypatch.setattr(train_ppr, "update", recording_update)
    train_ppr.main(args + ["--out", str(tmp_path / "rehearsed"), "--replay-coef", "0.5"])
    start = load_pretrained(policy).state_dict()
    plain, rehearsed = (load_pretrained(tmp_path / r / "final").state_dict() for r in ("plain", "rehearsed"))
    assert all(torch.equal(plain[k], start[k]) for k in start)
    assert any(not torch.equal(rehearsed[k], start[k]) for k in start)
    records = [json.loads(line) for line in (tmp_path / "rehearsed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in records] == [-1.0, -1.0]
    first = train_ppr.replay_batch(synthetic, 0, train_ppr.Config(replay_coef=0.5, replay_batch=2), SINGLE)
    assert records[0]["replay_nll"] == pytest.approx(float(sft_loss(load_pretrained(policy), first, "cpu")))
    assert losses == pytest.approx([0.5 * r["replay_nll"] for r in records])  # 0.5 x the NLL, once a step
    assert not any("replay_nll" in json.loads(line)
                   for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines())


def test_the_choice_warm_start_is_the_policy_and_the_reference_ppr_starts_from(policy, tmp_path, monkeypatch):
    """Under the preset, --choice-warm-start replaces the stage-1 weights by the A / B fine-tune's before anything is
    built from them: the trained policy, the KL reference and the rollouts all start from it, and the layer saved
    with the run names it. With --choice-warm-start 0, the stage-1 weights."""
    layer = {**preset.layer(tmp_path / "warm_start"), "sasrec_train": {}}  # the tests' cached SASRec
    monkeypatch.setattr(train_ppr, "read_train_config", lambda folder: {"config": {}, "preset": layer})
    tuned = load_pretrained(policy)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01)
    calls = []

    def choice_policy(model, tokenizer, data, toolbox, agent_cfg, layer, info, out, stage1, sizes, choice_cfg):
        calls.append((stage1, sizes, choice_cfg, type(toolbox), agent_cfg.temperature))
        return tuned, tmp_path / "choice_start"

    monkeypatch.setattr(preset, "choice_policy", choice_policy)
    stage1 = load_pretrained(policy).state_dict()
    for steps, expected in ((7, tuned.state_dict()), (0, stage1)):  # the preset's own value would be taken otherwise
        cfg, _ = train_ppr.parse_args(["--model", str(policy), *SMALL, "--out", str(tmp_path / "run"),
                                       "--choice-warm-start", str(steps), "--seed", "3"])
        run = train_ppr.setup(cfg, SINGLE, tmp_path / "run")
        for model in (run.model, run.ref_model, run.rollout.engine.model):
            for k, v in model.state_dict().items():
                assert torch.equal(v, expected[k]), k
        assert run.layer.get("choice_warm_start") == (str(tmp_path / "choice_start") if steps else None)
    assert calls == [(str(policy), (20,), ChoiceStartConfig(max_steps=7, seed=3), preset.PresetToolbox, 0.6)]  # once


def test_replay_batches_depend_on_seed_step_and_rank_only():
    cfg = train_ppr.Config(replay_coef=1.0, replay_batch=3)
    pool = list(range(100))
    rank0, rank1 = (type("Info", (), {"rank": r})() for r in (0, 1))
    assert train_ppr.replay_batch(pool, 5, cfg, rank0) == train_ppr.replay_batch(pool, 5, cfg, rank0)
    assert train_ppr.replay_batch(pool, 5, cfg, rank0) != train_ppr.replay_batch(pool, 6, cfg, rank0)
    assert train_ppr.replay_batch(pool, 5, cfg, rank0) != train_ppr.replay_batch(pool, 5, cfg, rank1)
    assert train_ppr.replay_batch(pool, 5, train_ppr.Config(replay_coef=0.0), rank0) == []


@pytest.mark.parametrize("replay_coef", [0.0, 0.5])
def test_logistic_update_gradient_is_the_prop_4_2_formula(policy, replay_coef):
    """One logistic step's gradient against the loss written out from the pairs: for each pair, with letter(c) the
    option where item c sits, d_MORE = ll(letter(c+) | MORE context) - ll(letter(c-) | MORE context) and
    d_LESS = ll(letter(c-) | LESS context) - ll(letter(c+) | LESS context), where ll is the answer's summed
    log-likelihood from one full forward; loss = mean over pairs of log(1 + e^-d_MORE) + log(1 + e^-d_LESS),
    plus replay_coef x the mean NLL of the rehearsal trajectories' sampled tokens."""
    from agenticrec.ppr import Pair, answer_text, bidirectional_tasks
    from agenticrec.tokenizer import load_tokenizer
    from test_grpo_update import SINGLE, RecordingSGD, assert_same
    tokenizer, model = load_tokenizer(policy), load_pretrained(policy)
    pairs = [Pair("u", (1,), 1, positive=10 + i, negative=100 + i, negative_rank=1, target_rank=2, pool_size=1)
             for i in range(3)]
    tasks = bidirectional_tasks(pairs, seed=0)
    assert {t.candidates[0] == pairs[t.pair_index].positive for t in tasks} == {True, False}  # both layouts
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(5, 500, (12 + i,), generator=g).tolist() for i in range(len(tasks))]
    replay = [([7, 8, 9, 10, 11], [0, 0, 1, 1, 1]), ([12, 13, 14], [0, 1, 1])]
    cfg = train_ppr.Config(temperature=0.8, grad_clip=1e9, replay_coef=replay_coef)
    optimizer = RecordingSGD(model.parameters(), lr=1.0)
    start = [p.detach().clone() for p in model.parameters()]
    train_ppr.logistic_update(model, optimizer, tokenizer, tasks, contexts,
                              replay if replay_coef else [], cfg, SINGLE)

    reference = load_pretrained(policy)
    with torch.no_grad():
        for p, value in zip(reference.parameters(), start):
            p.copy_(value)
    answers = {c: tokenizer.encode(answer_text(c), add_special_tokens=False) for c in "AB"}

    def loglik(context, letter):
        ids = torch.tensor([context + answers[letter]])
        logits = reference(ids)[0, len(context) - 1:-1].float() / cfg.temperature
        return logits.log_softmax(-1).gather(-1, ids[0, len(context):, None]).sum()

    total = 0.0
    for i, pair in enumerate(pairs):
        more, less = tasks[2 * i], tasks[2 * i + 1]
        assert more.pair_index == less.pair_index == i and (more.direction, less.direction) == (MORE, LESS)
        plus, minus = ("A", "B") if more.candidates[0] == pair.positive else ("B", "A")
        d_more = loglik(contexts[2 * i], plus) - loglik(contexts[2 * i], minus)
        d_less = loglik(contexts[2 * i + 1], minus) - loglik(contexts[2 * i + 1], plus)
        total = total + torch.log1p(torch.exp(-d_more)) + torch.log1p(torch.exp(-d_less))
    nll = sum(-reference(torch.tensor([ids]))[0, :-1].float().log_softmax(-1)[j - 1, ids[j]]
              for ids, mask in replay for j in range(1, len(ids)) if mask[j]) / 5  # 5 sampled tokens, T = 1
    expected = torch.autograd.grad(total / len(pairs) + replay_coef * nll, list(reference.parameters()))
    [grads] = optimizer.grads
    assert_same(grads, expected)


def test_two_gloo_ranks_equal_one_process_for_the_logistic_objective(tmp_path):
    """Prop 4.2's mean is over the GLOBAL pairs: 2 pairs on each of 2 ranks, under FSDP with SGD, give the weights
    of one process holding all 4."""
    one, two = worker_weights(tmp_path, "logistic", ranks=2)
    torch.manual_seed(0)
    start = Qwen3(tiny_config()).state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    assert moved > 1e-4
    # float32 sums in another order (a reduce-scatter) differ by rounding, ~1e-6 of the weights on some CPUs; a
    # per-rank mean instead of the global one would be off by a factor of 2, i.e. by the size of the step itself
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-3 * moved


def test_the_scoring_context_ends_where_the_last_sampled_turn_begins():
    """The logistic objective scores each answer after the stage-1 context: prompt, tool calls and observations,
    cut where the final (answer) turn's sampled tokens begin."""
    #       prompt    call     observation answer
    mask = [0, 0, 0] + [1, 1] + [0, 0] + [1, 1, 1]
    assert train_ppr.last_turn_start(mask) == 7
    assert train_ppr.last_turn_start([0, 0, 1]) == 2 and train_ppr.last_turn_start([0, 0]) == 2
    assert train_ppr.last_turn_start([1, 1]) == 0


def test_context_summary_by_hand():
    """What the log says about the stage-1 contexts: two of three A / B rollouts answered, one after a tool call
    (its context holds the call and the observation: 5 tokens after a 3-token prompt), two with none."""
    from types import SimpleNamespace as T
    call = T(name="get_session_behavior")
    #                prompt    call     observation answer
    with_tool = T(ids=list(range(11)), mask=[0, 0, 0] + [1, 1] + [0, 0, 0] + [1, 1, 1], prompt_len=3,
                  tool_calls=[call], invalid_reason=None)
    direct = T(ids=list(range(5)), mask=[0, 0, 0, 1, 1], prompt_len=3, tool_calls=[], invalid_reason=None)
    broken = T(ids=list(range(7)), mask=[0, 0, 0, 1, 1, 1, 1], prompt_len=3, tool_calls=[],
               invalid_reason="turn_token_limit")
    trajectories = [with_tool, direct, broken]
    contexts = [t.ids[:train_ppr.last_turn_start(t.mask)] for t in trajectories]
    assert [len(c) for c in contexts] == [8, 3, 3]
    assert train_ppr.context_summary(trajectories, contexts) == {
        "tasks": 3, "answered": 2 / 3, "with_observation": 1 / 3, "tool_calls": 1 / 3, "tokens_after_prompt": 5 / 3}


REPORT_BEFORE = {"ranks": [1, 7, 0], "agent": [0.0, 1.0], "likelihood": [1.0, 1.0], "agent_random": [1.0, 0.0],
                 "likelihood_random": [0.0, 0.0]}
REPORT_AFTER = {"ranks": [1, 1, 0], "agent": [1.0, 1.0], "likelihood": [1.0, 0.0], "agent_random": [0.0, 0.0],
                "likelihood_random": [1.0, 0.0]}


def test_report_by_hand(tmp_path, capsys):
    """Ranks 1, 7, absent -> H@1 1/3 and N@10 (1 + 1/log2(8) + 0) / 3 = 4/9; each accuracy row is its list's mean."""
    before, after = REPORT_BEFORE, REPORT_AFTER
    rows = train_ppr.report(tmp_path, before, after, {"violations": 1}, {"violations": 1})["rows"]
    expected = {"pairwise accuracy, agent answer (greedy, tools)": (0.5, 1.0),
                "pairwise accuracy, likelihood margin": (1.0, 0.5),
                "control, random negatives: agent answer": (0.5, 0.0),
                "control, random negatives: likelihood margin": (0.0, 0.5),
                "ranking H@1 on valid instances": (1 / 3, 2 / 3), "ranking N@10 on valid instances": (4 / 9, 2 / 3)}
    assert set(rows) == set(expected)
    for name, (b, a) in expected.items():
        assert (rows[name]["before"], rows[name]["after"]) == pytest.approx((b, a)), name
        assert rows[name]["diff"] == pytest.approx(a - b), name
    assert "ranking N@10 on valid instances" in capsys.readouterr().out
    contexts = {"tasks": 2, "answered": 0.0, "with_observation": 0.5, "tool_calls": 0.5, "tokens_after_prompt": 4.0}
    saved = train_ppr.report(tmp_path, before, after, {"violations": 1}, {"violations": 1}, contexts)
    assert saved["valid_contexts"] == contexts
    printed = capsys.readouterr().out
    assert ("stage-1 contexts of the valid tasks: 0.500 hold a tool observation; the stage-1 A / B answers are valid "
            "for 0.000") in printed
    note = train_ppr.no_change_note(saved["rows"]["pairwise accuracy, likelihood margin"], contexts)
    assert note and printed.rstrip().endswith(note)  # the likelihood's change (1.0 -> 0.5) has a CI that includes 0
    train_ppr.report(tmp_path, before, after, {"violations": 1}, {"violations": 1}, contexts, objective="grpo")
    note = train_ppr.no_change_note(saved["rows"]["pairwise accuracy, agent answer (greedy, tools)"], contexts, "grpo")
    assert "dropped_groups" in note and capsys.readouterr().out.rstrip().endswith(note)  # the agent's: 0.5 -> 1.0


def test_the_note_follows_the_accuracy_the_objective_trains(tmp_path, capsys):
    """The agent's answers go 0 -> 1 on 40 tasks (significant), the likelihood stays at 1/2: a grpo run, which trains
    the answers, gets no note; a logistic run, which trains the likelihood, gets the plateau note."""
    before = {**REPORT_BEFORE, "agent": [0.0] * 40, "likelihood": [0.0, 1.0] * 20}
    after = {**REPORT_AFTER, "agent": [1.0] * 40, "likelihood": [1.0, 0.0] * 20}
    train_ppr.report(tmp_path, before, after, {"violations": 20}, {"violations": 20}, objective="grpo")
    assert "note:" not in capsys.readouterr().out
    train_ppr.report(tmp_path, before, after, {"violations": 20}, {"violations": 20}, objective="logistic")
    assert "2 log 2" in capsys.readouterr().out


def test_the_no_change_note_names_the_contexts_when_most_hold_no_evidence():
    """None for a significant change; the bare-prompt note when fewer than half the contexts hold an observation
    (the preset: 0.046); the plateau note otherwise, or without a summary."""
    significant, unclear = {"lo": 0.01, "hi": 0.2}, {"lo": -0.02, "hi": 0.02}
    bare, evidence = {"tasks": 1034, "with_observation": 0.046}, {"tasks": 1034, "with_observation": 0.5}
    assert train_ppr.no_change_note(significant, bare) is None
    assert "right after the prompt" in train_ppr.no_change_note(unclear, bare)
    assert "2 log 2" in train_ppr.no_change_note(unclear, evidence)
    assert "2 log 2" in train_ppr.no_change_note(unclear, None)
    assert train_ppr.no_change_note({"lo": -0.2, "hi": -0.01}, bare) is None
    assert "dropped_groups" in train_ppr.no_change_note(unclear, evidence, "grpo")  # what grpo learns from
    assert train_ppr.no_change_note(significant, bare, "grpo") is None
