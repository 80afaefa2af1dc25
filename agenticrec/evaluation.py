"""Evaluation on fixed instances (docs/evaluation.md): ranking metrics with bootstrap CIs, the agent's own
statistics (invalid answers by reason, tool use, tokens, latency), the two-stage shortlist for large candidate
sets, and trajectories rendered for people (text and one self-contained HTML page). ``evaluate.py`` drives it.

A ranker's result is a list of per-instance target ranks (1-based; None when the target is missing from the answer,
the answer is invalid, or a shortlist dropped the target): every metric and CI is computed from those ranks.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from agenticrec.agent import Rollout, Trajectory
from agenticrec.baselines import Scorer, target_ranks
from agenticrec.data import Dataset, Instance
from agenticrec.reward import ranking_metrics
from agenticrec.stats import bootstrap_ci, paired_bootstrap

METRICS = ("H@1", "H@5", "H@10", "N@5", "N@10")


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def metric_cis(ranks: list[int | None], seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {mean, lo, hi, n}}: each metric's mean over instances and its 95% percentile bootstrap CI."""
    per_instance = [ranking_metrics(r) for r in ranks]
    return {k: bootstrap_ci([m[k] for m in per_instance], seed=seed) for k in METRICS}


def scorer_ranks(data: Dataset, instances: list[Instance], scorer: Scorer) -> tuple[list[int | None], float]:
    """(target ranks, seconds) of a non-LLM scorer (``baselines.target_ranks``: ties by train popularity, then
    candidate order; a target absent from the candidates ranks None)."""
    start = time.perf_counter()
    return target_ranks(data, instances, scorer), time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------------------------


def run_agent(rollout: Rollout, instances: list[Instance], chunk: int, progress: Callable | None = None
              ) -> tuple[list[Trajectory], float]:
    """(trajectories, wall seconds): greedy rollouts, ``chunk`` instances batched per engine call (the KV cache is
    sized by the chunk). ``progress(n)`` is called after each chunk (a tqdm bar's ``update``)."""
    start, out = time.perf_counter(), []
    for c in range(0, len(instances), chunk):
        out += rollout.run(instances[c:c + chunk])
        if progress is not None:
            progress(len(instances[c:c + chunk]))
    return out, time.perf_counter() - start


def agent_statistics(trajectories: list[Trajectory], wall_seconds: float) -> dict:
    """Everything about the agent besides quality: valid rate, invalid answers by reason (share of requests),
    tool calls per request (all and per tool), the tool error rate (errors / calls), mean tokens per request by
    kind, per-request latency (seconds from its batch's start to its end: what a request batched with the others
    waits), and generated tokens per second of wall time."""
    n = len(trajectories)
    invalid = Counter(t.invalid_reason for t in trajectories if t.invalid_reason is not None)
    calls = Counter(c.name for t in trajectories for c in t.tool_calls)
    total_calls = sum(calls.values())
    latency = np.array([t.seconds for t in trajectories])
    generated = sum(t.tokens["generated"] for t in trajectories)
    return {
        "requests": n,
        "valid_rate": 1.0 - sum(invalid.values()) / n,
        "invalid_by_reason": {reason: count / n for reason, count in sorted(invalid.items())},
        "tool_calls_per_request": total_calls / n,
        "tool_calls_by_tool": {name: count / n for name, count in sorted(calls.items())},
        "tool_error_rate": sum(t.tool_errors for t in trajectories) / max(1, total_calls),
        "tokens_per_request": {kind: float(np.mean([t.tokens[kind] for t in trajectories]))
                               for kind in ("prompt", "generated", "observation")},
        "latency_median_s": float(np.median(latency)),
        "latency_p90_s": float(np.percentile(latency, 90)),
        "generated_tokens_per_s": generated / wall_seconds if wall_seconds > 0 else 0.0,
        "wall_s": wall_seconds,
    }


# ----------------------------------------------------------------------------------------------------------------
# Two-stage ranking for large candidate sets
# ----------------------------------------------------------------------------------------------------------------


def shortlist(instances: list[Instance], scores: list[list[float]], k: int, seed: int = 0) -> list[Instance]:
    """Each instance with its candidates cut to the ``k`` best by ``scores`` (SASRec in evaluate.py), shuffled
    (seeded) so that the agent does not see the first stage's order. The target is KEPT as the instance's target
    even when it did not make the shortlist: such an instance can only score a miss, so the two-stage numbers
    include the first stage's recall loss."""
    rng = np.random.default_rng(seed)
    out = []
    for x, row in zip(instances, scores):
        best = sorted(range(len(x.candidates)), key=lambda j: (-row[j], j))[:k]
        chosen = [x.candidates[j] for j in best]
        rng.shuffle(chosen)
        out.append(Instance(x.user, x.history, x.target, chosen, x.position, x.split))
    return out


def shortlist_recall(instances: list[Instance]) -> float:
    """Share of instances whose target is among their candidates."""
    return float(np.mean([x.target in x.candidates for x in instances]))


# ----------------------------------------------------------------------------------------------------------------
# Trajectories for people
# ----------------------------------------------------------------------------------------------------------------


def segments(t: Trajectory, tokenizer) -> list[tuple[str, str]]:
    """The trajectory after its prompt as (kind, text) pieces in order: "policy" for tokens the policy sampled
    (mask 1: thinking, tool calls, the answer) and "environment" for forced ones (tool observations)."""
    out, start = [], t.prompt_len
    for end in range(t.prompt_len + 1, len(t.ids) + 1):
        if end == len(t.ids) or t.mask[end] != t.mask[start]:
            kind = "policy" if t.mask[start] else "environment"
            out.append((kind, tokenizer.decode(t.ids[start:end]).strip()))
            start = end
    return out


def _answer_lines(t: Trajectory, data: Dataset) -> list[str]:
    if t.ranking is None:
        return [f"INVALID ({t.invalid_reason})"]
    lines = [f"{n:>2}. {data.title(item)}{'   <== target' if item == t.instance.target else ''}"
             for n, item in enumerate(t.ranking, 1)]
    if t.rank is None:
        lines.append(f"(target not in the answer: {data.title(t.instance.target)})")
    return lines


def _prompt_lines(t: Trajectory, data: Dataset, max_history: int = 5) -> list[str]:
    x = t.instance
    shown = x.history[-max_history:]
    lines = [f"user {x.user}: {len(x.history)} history items, the last {len(shown)}:"]
    lines += [f"   {data.title(i)}" for i in shown]
    lines.append(f"{len(x.candidates)} candidates (target marked *):")
    lines += [f"  [{n}]{'*' if c == x.target else ' '} {data.title(c)}" for n, c in enumerate(x.candidates, 1)]
    return lines


def render_text(t: Trajectory, tokenizer, data: Dataset) -> str:
    """One trajectory as plain text: the prompt abbreviated (system prompt and tool schemas left out), each turn the
    policy wrote, each observation, the answer with the target marked, and the reward."""
    lines = [f"=== {t.instance.split} instance, {t.prompt_len} prompt tokens (system + tool schemas not shown)"]
    lines += _prompt_lines(t, data)
    for kind, text in segments(t, tokenizer):
        lines.append("--- policy:" if kind == "policy" else "--- observation:")
        lines += ["  " + line for line in text.splitlines()]
    lines.append("--- answer:")
    lines += ["  " + line for line in _answer_lines(t, data)]
    lines.append(f"--- reward {t.reward:+.3f}; target rank {t.rank}; {len(t.tool_calls)} tool calls; "
                 f"tokens {t.tokens}")
    return "\n".join(lines)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}
pre{white-space:pre-wrap;margin:.3rem 0;padding:.5rem;border-radius:4px}
.prompt{background:#f4f4f4}.policy{background:#eef4ff;border-left:4px solid #3b6fd8}
.environment{background:#fff6e5;border-left:4px solid #d89b3b}.answer{background:#eefbea;border-left:4px solid #3ba64a}
.invalid{background:#fdecec;border-left:4px solid #c33}h2{font-size:1.05rem;margin-top:2rem}"""


def render_html(trajectories: list[Trajectory], tokenizer, data: Dataset, title: str) -> str:
    """The same trajectories as one self-contained page (inline CSS, no scripts): the policy's turns, the tools'
    observations and the answer each in their own colour."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{HTML_STYLE}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for n, t in enumerate(trajectories, 1):
        parts.append(f"<h2>Trajectory {n}: reward {t.reward:+.3f}, target rank {t.rank}, "
                     f"{len(t.tool_calls)} tool calls</h2>")
        parts.append(f"<pre class='prompt'>{html.escape(chr(10).join(_prompt_lines(t, data)))}</pre>")
        for kind, text in segments(t, tokenizer):
            parts.append(f"<pre class='{kind}'>{html.escape(text)}</pre>")
        answer_class = "answer" if t.ranking is not None else "invalid"
        parts.append(f"<pre class='{answer_class}'>{html.escape(chr(10).join(_answer_lines(t, data)))}</pre>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def _cell(ci: dict) -> str:
    return f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def quality_table(rows: dict[str, dict]) -> str:
    """Markdown: one row per system, H@1/5/10 and N@5/10 each as mean [95% CI]."""
    lines = ["| system | n | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, row in rows.items():
        m = row["metrics"]
        lines.append(f"| {name} | {m['H@1']['n']} | " + " | ".join(_cell(m[k]) for k in METRICS) + " |")
    return "\n".join(lines)


def paired_table(rows: dict[str, dict], seed: int = 0) -> str:
    """Markdown: the first row minus each other row on H@1 and N@10, per instance on the same instances, with a
    paired 95% bootstrap CI (``stats.paired_bootstrap``); a CI excluding 0 is a difference the sample supports."""
    per_instance = {name: [ranking_metrics(r) for r in row["ranks"]] for name, row in rows.items()}
    (first, head), *others = per_instance.items()
    lines = [f"| {first} minus | H@1 | N@10 |", "|---|---|---|"]
    for name, values in others:
        cells = []
        for metric in ("H@1", "N@10"):
            d = paired_bootstrap([m[metric] for m in values], [m[metric] for m in head], seed=seed)
            cells.append(f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agent_table(rows: dict[str, dict]) -> str:
    """Markdown: the agent rows' validity, tool use, tokens and latency."""
    lines = ["| system | valid | invalid by reason | tool calls / request (by tool) | tool errors | tokens / request "
             "(prompt / generated / observation) | latency median / p90 (s) | generated tok/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        a = row.get("agent")
        if a is None:
            continue
        invalid = ", ".join(f"{r} {v:.3f}" for r, v in a["invalid_by_reason"].items()) or "none"
        by_tool = ", ".join(f"{n} {v:.2f}" for n, v in a["tool_calls_by_tool"].items()) or "none"
        tok = a["tokens_per_request"]
        lines.append(f"| {name} | {a['valid_rate']:.3f} | {invalid} | {a['tool_calls_per_request']:.2f} ({by_tool}) "
                     f"| {a['tool_error_rate']:.3f} | {tok['prompt']:.0f} / {tok['generated']:.0f} / "
                     f"{tok['observation']:.0f} | {a['latency_median_s']:.2f} / {a['latency_p90_s']:.2f} | "
                     f"{a['generated_tokens_per_s']:.0f} |")
    return "\n".join(lines)
