"""Evaluation speed of one checkpoint with tools: `evaluate.py` on the first --limit Games test instances (the
preset model after `python train_grpo.py`), timed end to end and per stage. The goal is <= 5 minutes for 1,000
instances on 2 CPU cores (docs/evaluation.md). Prints a markdown table and one JSON line.

    python benchmarks/evaluation.py [--checkpoint runs/grpo/final] [--limit 1000] [--chunk 250]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluate.py lives at the repository root
import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/grpo/final", help="a train_grpo.py out/final folder")
    parser.add_argument("--limit", type=int, default=1000, help="Games test instances")
    parser.add_argument("--chunk", type=int, default=250, help="instances per engine call")
    args = parser.parse_args()
    start = time.perf_counter()
    result = evaluate.main(["--checkpoint", args.checkpoint, "--limit", str(args.limit), "--chunk", str(args.chunk)])
    total = time.perf_counter() - start
    agent = result["rows"]["agent"]["agent"]
    print(f"\n| instances | total wall (s) | agent rollouts (s) | setup: data, tools, model (s) | requests/s | "
          f"generated tok/s | latency median / p90 (s) |\n|---|---|---|---|---|---|---|\n"
          f"| {args.limit} | {total:.0f} | {agent['wall_s']:.0f} | {total - agent['wall_s']:.0f} | "
          f"{args.limit / agent['wall_s']:.1f} | {agent['generated_tokens_per_s']:.0f} | "
          f"{agent['latency_median_s']:.1f} / {agent['latency_p90_s']:.1f} |")
    print(json.dumps({"instances": args.limit, "total_s": total, "agent_s": agent["wall_s"],
                      "generated_tokens_per_s": agent["generated_tokens_per_s"],
                      "N@10": result["rows"]["agent"]["metrics"]["N@10"]["mean"]}))


if __name__ == "__main__":
    main()
