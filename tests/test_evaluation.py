"""The evaluation harness: metrics through the ranker path on hand-built rankings, bootstrap CI coverage, the
agent statistics, the two-stage shortlist, trajectory rendering, and evaluate.py end to end (every JSON field)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import evaluate
from agenticrec.agent import Rollout, ToolCallRecord, Trajectory
from agenticrec.data import Instance, build_instances, load_dataset, load_instances
from agenticrec.engine import Engine
from agenticrec.evaluation import (METRICS, agent_statistics, metric_cis, paired_table, render_html, render_text,
                                   scorer_ranks, segments, shortlist, shortlist_recall)
from agenticrec.stats import bootstrap_ci
from grpo_fakes import tiny_policy_folder


def _instance(candidates, target, user="u"):
    return Instance(user, [1, 2], target, list(candidates), None, "test")


def test_scorer_ranks_and_metrics_on_hand_built_rankings():
    data = load_dataset("beauty2023")
    xs = [_instance([10, 11, 12, 13], 12), _instance([10, 11, 12, 13], 13), _instance([20, 21, 22], 99)]
    scores = [[4.0, 3.0, 2.0, 1.0],  # order 10, 11, 12, 13: target 12 at rank 3
              [0.0, 0.0, 0.0, 5.0],  # target first
              [1.0, 2.0, 3.0]]  # target absent (a shortlist dropped it): None
    ranks, _ = scorer_ranks(data, xs, lambda instances: scores)
    assert ranks == [3, 1, None]
    m = metric_cis(ranks)
    assert m["H@1"]["mean"] == pytest.approx(1 / 3)
    assert m["H@5"]["mean"] == pytest.approx(2 / 3)
    assert m["N@5"]["mean"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["N@10"]["mean"] == pytest.approx((1 / math.log2(4) + 1) / 3)
    assert all(m[k]["n"] == 3 and m[k]["lo"] <= m[k]["mean"] <= m[k]["hi"] for k in METRICS)


@given(ranks=st.lists(st.one_of(st.none(), st.integers(1, 100)), min_size=1, max_size=30))
def test_metric_means_are_in_the_unit_interval_and_hits_grow_with_k(ranks):
    m = metric_cis(ranks)
    assert all(0.0 <= m[k]["lo"] <= m[k]["mean"] <= m[k]["hi"] <= 1.0 for k in METRICS)
    assert m["H@1"]["mean"] <= m["H@5"]["mean"] <= m["H@10"]["mean"]
    assert m["N@5"]["mean"] <= m["N@10"]["mean"] <= m["H@10"]["mean"]


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Bernoulli(0.3) samples of 400 (an H@1-like metric): over 400 seeded repetitions the 95% interval should
    contain 0.3 in ~95% of them. Binomial spread of the coverage over 400 repetitions is ~1.1%, so [0.92, 0.98] is
    a >= 4-sigma band around 0.95 on the low side; a biased or too-narrow interval falls out of it."""
    rng = np.random.default_rng(123)
    covered = [lo <= 0.3 <= hi for lo, hi in
               ((ci["lo"], ci["hi"]) for ci in (bootstrap_ci(rng.random(400) < 0.3, samples=2000, seed=s)
                                                for s in range(400)))]
    assert 0.92 <= np.mean(covered) <= 0.98


def test_bootstrap_of_a_constant_is_exact_and_empty_input_is_rejected():
    assert bootstrap_ci([0.25] * 50) == {"mean": 0.25, "lo": 0.25, "hi": 0.25, "n": 50}
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_paired_table_by_hand():
    # the agent's ranks 1 1 2 against 3 1 2 and 1 1 2: H@1 differs on the first instance only (1 - 0), N@10 by
    # 1 - 1/log2(4) = 0.5 there; of 3 instances, a bootstrap mean is 0 with probability (2/3)^3 and 1 (all three
    # the first) with probability 1/27 > 2.5 %: the CI is [0, 1] ([0, 0.5] for N@10)
    rows = {"agent": {"ranks": [1, 1, 2]}, "tool": {"ranks": [3, 1, 2]}, "same": {"ranks": [1, 1, 2]}}
    assert paired_table(rows).splitlines() == [
        "| agent minus | H@1 | N@10 |", "|---|---|---|",
        "| tool | +0.333 [+0.000, +1.000] | +0.167 [+0.000, +0.500] |",
        "| same | +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |"]


def _trajectory(x, reason=None, calls=(), seconds=1.0, generated=3, observation=4):
    prompt = [5] * 6
    ids = prompt + [7] * generated + [8] * observation
    mask = [0] * 6 + [1] * generated + [0] * observation
    t = Trajectory(x, 0, ids, mask, [0.0] * len(ids), len(prompt), invalid_reason=reason, seconds=seconds)
    t.tool_calls = [ToolCallRecord(name, {}, error, 0.0, "obs", observation) for name, error in calls]
    t.ranking = None if reason else tuple(x.candidates)
    return t


def test_agent_statistics_by_hand():
    x = _instance([10, 11, 12], 10)
    ts = [_trajectory(x, calls=[("a", None), ("b", "bad")], seconds=1.0),
          _trajectory(x, reason="no_action", seconds=2.0),
          _trajectory(x, calls=[("a", None)], seconds=3.0),
          _trajectory(x, reason="tool_budget_exceeded", seconds=10.0)]
    s = agent_statistics(ts, wall_seconds=4.0)
    assert s["valid_rate"] == 0.5
    assert s["invalid_by_reason"] == {"no_action": 0.25, "tool_budget_exceeded": 0.25}
    assert s["tool_calls_per_request"] == 0.75 and s["tool_calls_by_tool"] == {"a": 0.5, "b": 0.25}
    assert s["tool_error_rate"] == pytest.approx(1 / 3)
    assert s["tokens_per_request"] == {"prompt": 6.0, "generated": 3.0, "observation": 4.0}
    assert s["latency_median_s"] == 2.5 and s["latency_p90_s"] == pytest.approx(3.0 + 0.7 * 7.0)  # numpy: position 0.9 * 3
    assert s["generated_tokens_per_s"] == 12 / 4.0


def test_shortlist_keeps_the_best_k_hides_their_order_and_keeps_a_dropped_target():
    xs = [_instance(range(100, 110), 109), _instance(range(100, 110), 100)]
    scores = [[float(j) for j in range(10)]] * 2  # higher j is better: the best 3 are 107, 108, 109
    short = shortlist(xs, scores, 3, seed=0)
    assert all(sorted(s.candidates) == [107, 108, 109] for s in short)
    assert short[1].target == 100 and 100 not in short[1].candidates  # dropped, still the target: a miss
    assert shortlist_recall(short) == 0.5
    orders = {tuple(s.candidates) for s in shortlist(xs * 10, scores * 10, 3, seed=1)}
    assert len(orders) > 1  # shuffled, not the first stage's order


def test_instances_for_other_sizes_follow_the_shipped_protocol():
    data = load_dataset("beauty2023")
    shipped = load_instances("beauty2023", "test")[:20]
    rebuilt = build_instances(data, "test", 20)[0][:20]
    assert [(x.user, x.target, x.candidates) for x in rebuilt] == [(x.user, x.target, x.candidates) for x in shipped]
    bigger = build_instances(data, "test", 50)[0][:20]
    assert all(len(x.candidates) == 50 and x.target in x.candidates for x in bigger)
    assert [x.target for x in bigger] == [x.target for x in shipped]


def test_segments_split_policy_tokens_from_observations(tokenizer):
    x = _instance([10, 11], 10)
    think = tokenizer.encode("<think>hi</think>", add_special_tokens=False)
    obs = tokenizer.encode("<tool_response>x</tool_response>", add_special_tokens=False)
    answer = tokenizer.encode("<answer>1</answer>", add_special_tokens=False)
    ids = [1, 2] + think + obs + answer
    mask = [0, 0] + [1] * len(think) + [0] * len(obs) + [1] * len(answer)
    t = Trajectory(x, 0, ids, mask, [0.0] * len(ids), 2)
    assert segments(t, tokenizer) == [("policy", "<think>hi</think>"),
                                      ("environment", "<tool_response>x</tool_response>"),
                                      ("policy", "<answer>1</answer>")]


def test_renderings_mark_the_target_and_escape_html(tokenizer):
    data = load_dataset("beauty2023")
    x = load_instances("beauty2023", "test")[0]
    ids = tokenizer.encode("prompt <b>", add_special_tokens=False)
    policy = tokenizer.encode("<think>a < b</think>", add_special_tokens=False)
    t = Trajectory(x, 0, ids + policy, [0] * len(ids) + [1] * len(policy), [0.0] * (len(ids) + len(policy)),
                   len(ids), ranking=tuple(x.candidates[:10]), reward=0.5)
    text = render_text(t, tokenizer, data)
    assert "<== target" in text or "target not in the answer" in text
    assert f"[{x.candidates.index(x.target) + 1}]*" in text  # the prompt marks the target among the candidates
    page = render_html([t], tokenizer, data, "demo")
    assert page.startswith("<!doctype html>") and "a &lt; b" in page and "<script" not in page
    assert "class='policy'" in page


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy_folder(tmp_path_factory.mktemp("policy"))


def test_evaluate_command_writes_every_field(policy, tmp_path, capsys):
    out = tmp_path / "eval.json"
    result = evaluate.main(["--checkpoint", str(policy), "--dataset", "beauty2023", "--limit", "6", "--baselines",
                            "--frozen", str(policy), "--tools", "get_user_profile", "--max-turn-tokens", "8",
                            "--max-context", "4096", "--chunk", "4", "--threads", "1",
                            "--json", str(out), "--show", "1", "--html", str(tmp_path / "t.html")])
    saved = json.loads(out.read_text())
    assert saved["instances"] == 6 and saved["rows"].keys() == result["rows"].keys()
    assert set(saved["rows"]) == {"agent", "random", "popularity", "co-occurrence", "SASRec",
                                  "frozen policy, no tools", "frozen policy, tools"}
    for name, row in saved["rows"].items():
        assert set(row["metrics"]) == set(METRICS)
        assert all(set(ci) == {"mean", "lo", "hi", "n"} and ci["n"] == 6 for ci in row["metrics"].values())
    for name in ("agent", "frozen policy, tools"):
        assert set(saved["rows"][name]["agent"]) == {
            "requests", "valid_rate", "invalid_by_reason", "tool_calls_per_request", "tool_calls_by_tool",
            "tool_error_rate", "tokens_per_request", "latency_median_s", "latency_p90_s", "generated_tokens_per_s",
            "wall_s"}
    printed = capsys.readouterr().out
    assert "| system | n | H@1 |" in printed and "--- answer:" in printed
    assert "| agent minus | H@1 | N@10 |" in printed and "| SASRec | " in printed.split("| agent minus |")[1]
    assert (tmp_path / "t.html").read_text().count("<h2>Trajectory") == 6


def test_the_decode_flag_reaches_the_engine_and_keeps_every_trajectory(policy, monkeypatch):
    """``--decode static`` (the fixed-shape step) gives the dynamic step's trajectories, token for token."""
    engines, trajectories = [], []

    class Recorded(Rollout):
        def run(self, *args, **kwargs):
            out = super().run(*args, **kwargs)
            trajectories.append([t.ids for t in out])
            return out

    monkeypatch.setattr(evaluate, "Engine", lambda *a, **k: engines.append(Engine(*a, **k)) or engines[-1])
    monkeypatch.setattr(evaluate, "Rollout", Recorded)
    args = ["--checkpoint", str(policy), "--dataset", "beauty2023", "--limit", "6", "--tools", "get_user_profile",
            "--max-turn-tokens", "24", "--max-context", "4096", "--chunk", "4", "--threads", "1"]
    for mode in ("dynamic", "static"):
        evaluate.main(args + ["--decode", mode])
    assert [e.decode for e in engines] == ["dynamic", "static"]
    assert [len(t) for t in trajectories] == [4, 2, 4, 2] and trajectories[2:] == trajectories[:2]


def test_scaling_table_has_the_two_stage_row_with_its_recall(policy, tmp_path):
    result = evaluate.main(["--checkpoint", str(policy), "--dataset", "beauty2023", "--limit", "3", "--table",
                            "scaling", "--scaling", "5,8", "--shortlist", "5", "--tools", "get_user_profile",
                            "--max-turn-tokens", "4", "--max-context", "4096",
                            "--threads", "1"])
    rows = result["rows"]
    assert list(rows) == ["N=5, agent", "N=5, SASRec", "N=8, agent", "N=8, SASRec",
                          "N=8, two-stage (SASRec top 5 -> agent)"]
    assert 0.0 <= rows["N=8, two-stage (SASRec top 5 -> agent)"]["shortlist_recall"] <= 1.0


def test_bad_flags_give_clear_errors(policy, tmp_path):
    with pytest.raises(SystemExit, match="--table must be one of"):
        evaluate.main(["--checkpoint", str(policy), "--table", "nope"])
    with pytest.raises(SystemExit, match="--split must be"):
        evaluate.main(["--split", "dev"])
    with pytest.raises(SystemExit, match="not a model folder"):
        evaluate.main(["--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs the untrained policy"):
        evaluate.main(["--checkpoint", str(policy), "--dataset", "beauty2023", "--table", "ablation", "--limit", "2"])
    with pytest.raises(SystemExit, match="does not have"):
        evaluate.main(["--checkpoint", str(policy), "--dataset", "beauty2023", "--limit", "2", "--tools",
                       "get_user_profile", "--disable-tool", "get_similar_users"])


def test_plots_are_png_files(tmp_path):
    pytest.importorskip("matplotlib")  # the optional `plots` extra
    from agenticrec.plots import write_plots
    ci = {k: {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 10} for k in METRICS}
    agent = {"tool_calls_by_tool": {"a": 1.0, "b": 0.5}, "latency_median_s": 1.0}
    rows = {f"N={n}, agent": {"N": n, "metrics": ci, "agent": agent} for n in (20, 50)}
    rows["N=50, SASRec"] = {"N": 50, "metrics": ci}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "reward": 0.1 * s, "kl": 0.01}) + "\n" for s in (1, 2, 3)))
    written = write_plots(tmp_path / "plots", {"rows": rows}, metrics)
    assert sorted(p.name for p in written) == ["scaling.png", "tool_usage.png", "training_curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_the_first_command_in_results_md_runs_and_writes_every_field(policy, tmp_path):
    """docs/results.md's main-table command, with the checkpoint swapped for a tiny random policy, the dataset for
    the small beauty2023 (no Games SASRec training in CI) and a few instances: every JSON field is there."""
    import re
    import shlex
    from pathlib import Path
    text = (Path(__file__).parents[1] / "docs" / "results.md").read_text()
    command = re.search(r"python evaluate\.py ([^\n`]*--baselines[^\n`]*)", text).group(1)
    args = shlex.split(command)
    for flag, value in (("--checkpoint", str(policy)), ("--dataset", "beauty2023"), ("--limit", "3"),
                        ("--json", str(tmp_path / "main.json"))):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    args += ["--frozen", str(policy), "--max-turn-tokens", "8", "--max-context", "4096",
             "--tools", "get_user_profile", "--threads", "1"]
    evaluate.main(args)
    saved = json.loads((tmp_path / "main.json").read_text())
    assert {"agent", "random", "popularity", "co-occurrence", "SASRec", "frozen policy, no tools",
            "frozen policy, tools"} == set(saved["rows"])
    assert all(set(row["metrics"]) == set(METRICS) for row in saved["rows"].values())


def test_ablation_and_per_tool_tables_have_their_rows(policy):
    small = ["--checkpoint", str(policy), "--dataset", "beauty2023", "--limit", "2", "--max-turn-tokens", "4",
             "--max-context", "4096", "--threads", "1"]
    ablation = evaluate.main(small + ["--table", "ablation", "--frozen", str(policy), "--tools", "get_user_profile"])
    assert list(ablation["rows"]) == ["frozen, reasoning only", "frozen, with tools", "trained, reasoning only",
                                      "trained, with tools"]
    tools = evaluate.main(small + ["--table", "tools", "--tools", "get_user_profile,item_info_search"])
    assert list(tools["rows"]) == ["all tools", "without get_user_profile", "without item_info_search"]
    no_tools = evaluate.main(small + ["--tools", "none"])
    assert list(no_tools["rows"]) == ["agent, no tools"]
    assert no_tools["rows"]["agent, no tools"]["agent"]["tool_calls_per_request"] == 0.0


def test_copy_fidelity_compares_each_answer_with_the_last_line_it_read_by_hand():
    from benchmarks.copy_fidelity import fidelity, line_rank, row
    x = Instance("u", [1, 2], 30, [10, 20, 30, 40], position=3)  # the target is candidate 3
    line = SimpleNamespace(observation="evidence\nCandidates by co-occurrence, best first: 3, 1, 4, 2")
    t = [SimpleNamespace(instance=x, tool_calls=[line], ranking=(30, 10), invalid_reason=None, rank=1),  # copied
         SimpleNamespace(instance=x, tool_calls=[line], ranking=(10, 30), invalid_reason=None, rank=2),  # both differ
         SimpleNamespace(instance=x, tool_calls=[line], ranking=None, invalid_reason="duplicate_index", rank=None),
         SimpleNamespace(instance=x, tool_calls=[], ranking=(40, 30), invalid_reason=None, rank=2),  # no line read
         SimpleNamespace(instance=x, tool_calls=[line], ranking=(30, 40), invalid_reason=None, rank=1)]  # 2nd differs
    assert [line_rank(u) for u in t] == [1, 1, 1, None, 1]
    assert fidelity(t) == {"valid": 0.8, "exact": 1 / 3, "differing": 0.5}
    ndcg2 = 1 / math.log2(3)
    agent_n10, line_n10 = (2 + 2 * ndcg2) / 5, 0.8
    assert row(5, t).startswith("| 5 | 5 | 0.800 | 0.333 | 0.500 | 0.400 / 0.800 | -0.400 [")
    assert f"| {agent_n10:.3f} / {line_n10:.3f} | {agent_n10 - line_n10:+.3f} [" in row(5, t)
