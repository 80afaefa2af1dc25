"""Non-LLM rankers on a dataset's fixed test instances (20 candidates), all fitted on train data only:
random, popularity, item co-occurrence with the history (window +-3), and the hand-written SASRec (trained here,
with its wall time). Prints a markdown table and a JSON line.

    python benchmarks/rankers.py [--dataset games] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from agenticrec.baselines import cooccurrence_scorer, evaluate_scorer, popularity_scorer, random_scorer
from agenticrec.data import load_dataset, load_instances
from agenticrec.sasrec import load_or_train, score_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games", help="dataset name under data/")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test instances only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset)
    test = load_instances(args.dataset, "test")[:args.limit]
    valid = load_instances(args.dataset, "valid")
    results = {"random": evaluate_scorer(data, test, random_scorer),
               "popularity": evaluate_scorer(data, test, popularity_scorer(data)),
               "co-occurrence": evaluate_scorer(data, test, cooccurrence_scorer(data))}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # always train afresh: the training time is part of the result
        model = load_or_train(data, valid, cache_dir=Path(cache))
    train_s = time.perf_counter() - start
    results["SASRec"] = evaluate_scorer(data, test, lambda xs: score_candidates(model, xs))
    print(f"{args.dataset}, test split, {len(test)} instances, 20 candidates; SASRec trained in {train_s:.0f}s\n")
    print("| ranker | H@1 | H@5 | H@10 | N@5 | N@10 |\n|---|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['H@1']:.3f} | {m['H@5']:.3f} | {m['H@10']:.3f} | {m['N@5']:.3f} | {m['N@10']:.3f} |")
    print(json.dumps({"dataset": args.dataset, "instances": len(test), "sasrec_train_seconds": train_s,
                      "results": results}))


if __name__ == "__main__":
    main()
