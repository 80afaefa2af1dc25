"""Tool latency: median and p90 milliseconds per tool over real instances (goal: median <= 1 ms).

    python benchmarks/tools.py [--dataset games] [--calls 300]

Uses the cached SASRec of the dataset (trained on first use, about 2 minutes for Games).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from agenticrec.data import load_dataset, load_instances
from agenticrec.sasrec import load_or_train
from agenticrec.tools import Toolbox, context_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games", help="dataset name under data/")
    parser.add_argument("--calls", type=int, default=300, help="instances per tool")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset)
    test, valid = load_instances(args.dataset, "test"), load_instances(args.dataset, "valid")
    start = time.perf_counter()
    box = Toolbox(data, load_or_train(data, valid))
    print(f"toolbox ready in {time.perf_counter() - start:.1f}s")
    contexts = [context_for(x, data) for x in test[:args.calls]]
    rows, all_ms = [], []
    for tool in box.tools:
        ms = []
        for x, ctx in zip(test, contexts):
            arguments = {p: data.title(x.history[-1]) for p in tool.parameters}
            result = box.call(tool.name, arguments, ctx)
            assert result.error is None, result.text
            ms.append(result.seconds * 1e3)
        rows.append((tool.name, np.median(ms), np.percentile(ms, 90)))
        all_ms += ms
    print("| tool | median ms | p90 ms |\n|---|---|---|")
    for name, median, p90 in rows:
        print(f"| {name} | {median:.3f} | {p90:.3f} |")
    print(f"| all tools | {np.median(all_ms):.3f} | {np.percentile(all_ms, 90):.3f} |")
    print(json.dumps({name: median for name, median, _ in rows} | {"all": float(np.median(all_ms))}))


if __name__ == "__main__":
    main()
