"""How faithfully a preset agent copies the ordering line it answers from, at each candidate-set size.

    python benchmarks/copy_fidelity.py --checkpoint runs/grpo_n20_50_100/final --candidates 20,50,100 [--limit 2000]

A preset policy ranks by copying the top 10 of the last ordering line it read (the merged line after its second
tool; docs/grpo.md, "The CPU preset"). For each N this runs the greedy agent on the first --limit test instances (the
checkpoint's agent settings, a context of 4,096) and prints a markdown row: the valid rate; on valid answers, the
share equal to that line's top 10 and the share of answer positions that differ; H@1 and N@10 of the agent and of
the line copied verbatim on the same instances, and their paired difference with a 95% bootstrap CI: what the
copy loses, invalid answers included (a request without a tool call has no line: a miss for the line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluate.py lives at the repository root
import evaluate  # noqa: E402
from agenticrec.data import load_dataset, parse_candidate_sizes  # noqa: E402
from agenticrec.reward import ranking_metrics  # noqa: E402
from agenticrec.stats import paired_bootstrap  # noqa: E402
from agenticrec.warmstart import ordering_of  # noqa: E402


def last_line(t) -> list[int] | None:
    """The candidate numbers of the last ordering line the trajectory read, best first (None: no line)."""
    return ordering_of(t.tool_calls[-1].observation) if t.tool_calls else None


def line_rank(t) -> int | None:
    """The target's rank in the last line read, as if the agent had copied it verbatim."""
    line = last_line(t)
    return line.index(t.instance.candidates.index(t.instance.target) + 1) + 1 if line else None


def fidelity(trajectories) -> dict:
    """Valid rate; on valid answers after a line, the share equal to its top 10 and the share of positions differing."""
    answered = [t for t in trajectories if t.invalid_reason is None and last_line(t)]
    exact = differing = 0
    for t in answered:
        copied = tuple(t.instance.candidates[n - 1] for n in last_line(t)[:len(t.ranking)])
        exact += t.ranking == copied
        differing += sum(a != b for a, b in zip(t.ranking, copied)) / len(t.ranking)
    n = max(1, len(answered))
    return {"valid": sum(t.invalid_reason is None for t in trajectories) / len(trajectories),
            "exact": exact / n, "differing": differing / n}


def row(n: int, trajectories) -> str:
    f = fidelity(trajectories)
    agent = [ranking_metrics(t.rank) for t in trajectories]
    line = [ranking_metrics(line_rank(t)) for t in trajectories]
    cells = []
    for metric in ("H@1", "N@10"):
        a, b = [m[metric] for m in agent], [m[metric] for m in line]
        d = paired_bootstrap(b, a)
        cells.append(f"{sum(a) / len(a):.3f} / {sum(b) / len(b):.3f} | "
                     f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
    return f"| {n} | {len(trajectories)} | {f['valid']:.3f} | {f['exact']:.3f} | {f['differing']:.3f} | " \
           + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/grpo/final", help="a preset train_grpo.py out/final folder")
    parser.add_argument("--candidates", default="20", help="candidate-set sizes, a comma list")
    parser.add_argument("--limit", type=int, default=2000, help="test instances per size")
    args = parser.parse_args()
    lines = ["| N | n | valid | answer = line's top 10 | positions differing | H@1 agent / line | agent minus line "
             "| N@10 agent / line | agent minus line |", "|---|---|---|---|---|---|---|---|---|"]
    for n in parse_candidate_sizes(args.candidates):
        cfg, layer = evaluate.parse_args(["--checkpoint", args.checkpoint, "--split", "test", "--limit",
                                          str(args.limit), "--candidates", str(n), "--max-context", "4096",
                                          "--frozen", ""])
        if layer is None:
            raise SystemExit(f"error: {args.checkpoint} is not a preset checkpoint: its tools print no ordering line")
        data = load_dataset(cfg.dataset)
        systems = evaluate.Systems(cfg, data, layer)
        systems.agent(f"agent, N = {n}", args.checkpoint, evaluate.eval_instances(cfg, data, n))
        (trajectories, _), = systems.trajectories.values()
        lines.append(row(n, trajectories))
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
