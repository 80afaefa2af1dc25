"""PNG plots for ``evaluate.py --plots DIR`` (the optional ``plots`` extra: ``pip install -e .[plots]``):
training curves from a run's metrics.jsonl, tool-usage bars of the agent rows, and quality / latency against the
candidate-set size of a scaling table."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: --plots needs matplotlib: pip install -e .[plots]") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


CURVES = (("reward", "reward (training rollouts)"), ("eval_N@10", "N@10 on valid (greedy)"),
          ("tool_calls", "tool calls per rollout"), ("kl", "KL to the reference"))


def training_curves(plt, metrics_file: Path, folder: Path) -> Path:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for ax, (key, title) in zip(axes, CURVES):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    return _save(plt, fig, folder / "training_curves.png")


def tool_usage(plt, rows: dict, folder: Path) -> Path | None:
    agents = {name: row["agent"]["tool_calls_by_tool"] for name, row in rows.items() if "agent" in row}
    tools = sorted({t for calls in agents.values() for t in calls})
    if not tools:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(agents) * len(tools) / 2), 3.5))
    width = 0.8 / len(tools)
    for j, tool in enumerate(tools):
        ax.bar([i + j * width for i in range(len(agents))], [calls.get(tool, 0.0) for calls in agents.values()],
               width, label=tool)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(agents))], list(agents), rotation=20, fontsize=8)
    ax.set_ylabel("calls per request")
    ax.legend(fontsize=8)
    return _save(plt, fig, folder / "tool_usage.png")


def scaling(plt, rows: dict, folder: Path) -> Path | None:
    series: dict[str, list] = {}
    for name, row in rows.items():
        if "N" in row:
            series.setdefault(name.split(", ", 1)[1], []).append(row)
    if not series:
        return None
    fig, (quality, latency) = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, points in series.items():
        ns = [p["N"] for p in points]
        quality.errorbar(ns, [p["metrics"]["N@10"]["mean"] for p in points], marker="o", label=label,
                         yerr=[[p["metrics"]["N@10"]["mean"] - p["metrics"]["N@10"]["lo"] for p in points],
                               [p["metrics"]["N@10"]["hi"] - p["metrics"]["N@10"]["mean"] for p in points]])
        if all("agent" in p for p in points):
            latency.plot(ns, [p["agent"]["latency_median_s"] for p in points], marker="o", label=label)
    quality.set(xlabel="candidates N", ylabel="N@10 (95% CI)", xscale="log")
    latency.set(xlabel="candidates N", ylabel="median latency per request (s)", xscale="log")
    quality.legend(fontsize=7)
    latency.legend(fontsize=7)
    return _save(plt, fig, folder / "scaling.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(folder: Path, result: dict, metrics_file: Path | None = None) -> list[Path]:
    """Every plot the inputs allow; returns the files written."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = [tool_usage(plt, result["rows"], folder), scaling(plt, result["rows"], folder)]
    if metrics_file is not None:
        if not metrics_file.is_file():
            raise SystemExit(f"error: --metrics {metrics_file} does not exist")
        written.append(training_curves(plt, metrics_file, folder))
    return [p for p in written if p is not None]
