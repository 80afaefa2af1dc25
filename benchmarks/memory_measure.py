"""Each phase's peak tensor memory per rank, measured on the real code path (train_grpo.py under torchrun, 2 gloo
ranks, bf16) at a real shape, beside benchmarks/memory.py's prediction for the same config, flags and lengths.

    python benchmarks/memory_measure.py [--layers 2] [--folder /tmp/agenticrec-memory] [--turn-tokens 32]

The model: Qwen3-4B-Instruct-2507's config.json (the repository's fixture) with its full widths and vocabulary,
cut to ``--layers`` decoder layers, random weights, the real Qwen3 tokenizer. The run: the paper's settings where
they shape memory (bf16, all seven tools, context 6,144, G 8, activation checkpointing, the KL reference) with one
instance per rank and one step; ``--turn-tokens`` (train_grpo's --max-turn-tokens) short because a random model
never stops a turn by itself and a CPU decodes a 0.6 B-parameter bf16 model slowly; ``--profiles none`` (the LLM profiles of 50,546 train instances
would take days on a CPU); ``--no-drop-all-negative``, because a random policy's groups are all invalid and would
be dropped, leaving no update to measure. The KV budget is set to hold exactly one group (8 rows) per call.

Measured per phase and rank: the bytes of the tensors resident when it starts (the model's shard, gradients,
optimiser states, reference shard, rollout copy, KV cache: read from the objects), plus the peak of the tensor
allocations inside it (``agenticrec.memtrace``: torch.profiler's memory events). Phases: refresh
(``sync_rollout``), each engine call (rollout or evaluation), the update (one group per rank).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
FIXTURE = ROOT / "tests" / "fixtures" / "qwen3_tokenizer"
GB = 1e9


# ------------------------------------------------------------------------------------------------------------------
# The model folder (a plain process, before torchrun)
# ------------------------------------------------------------------------------------------------------------------


def build_model(folder: Path, layers: int) -> None:
    """Qwen3-4B-Instruct-2507's config cut to ``layers`` layers, random bf16 weights, the real tokenizer."""
    import torch

    from agenticrec.model import Qwen3, Qwen3Config, save_pretrained
    hf = json.loads((FIXTURE / "Qwen3-4B-Instruct-2507" / "config.json").read_text())
    hf["num_hidden_layers"] = layers
    torch.manual_seed(0)
    save_pretrained(Qwen3(Qwen3Config.from_hf(hf)).to(torch.bfloat16), folder)
    for file in (FIXTURE / "Qwen3-4B-Instruct-2507").iterdir():
        if file.suffix != ".gz" and file.name != "config.json":
            shutil.copy(file, folder / file.name)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes(gzip.decompress((FIXTURE / f"{name}.gz").read_bytes()))


# ------------------------------------------------------------------------------------------------------------------
# The worker: train_grpo.main with each phase wrapped
# ------------------------------------------------------------------------------------------------------------------


def local_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a DTensor counts its local shard)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def resident(run) -> dict[str, int]:
    """What this rank holds when a phase starts, read from the run's objects."""
    engine = run.rollout.engine
    copy = engine.model if engine.model is not None and engine.model is not run.model else None
    state = [v for s in run.optimizer.state.values() for v in s.values() if hasattr(v, "nbytes") and v.dim() > 0]
    return {"master": local_bytes(run.model.parameters()), "grads": local_bytes(p.grad for p in run.model.parameters()),
            "adam": local_bytes(state), "reference": local_bytes(run.ref_model.parameters()),
            "copy": local_bytes(copy.parameters()) if copy is not None else 0,
            "kv": engine.cache.nbytes if engine.cache is not None else 0}


def worker(out: Path, argv: list[str]) -> None:
    import torch

    import train_grpo
    from agenticrec.engine import Engine
    from agenticrec.memtrace import allocation_peak

    records, state = [], {}
    rank = int(os.environ["RANK"])

    def measured(name, fn, shape):
        def wrapper(*args, **kwargs):
            before = resident(state["run"])
            with allocation_peak() as peak:
                result = fn(*args, **kwargs)
            records.append({"phase": name(args) if callable(name) else name, "resident": before,
                            "allocated_peak": peak.bytes, "shape": shape(args, result)})
            (out / f"measured_rank{rank}.json").write_text(json.dumps(records, indent=1))
            return result
        return wrapper

    real_setup = train_grpo.setup
    train_grpo.setup = lambda cfg, info, o: state.setdefault("run", real_setup(cfg, info, o))
    train_grpo.sync_rollout = measured("refresh", train_grpo.sync_rollout, lambda a, r: {})
    train_grpo.update = measured("update", train_grpo.update, lambda a, r: update_shape(a[3]))
    Engine.run = measured(lambda a: "evaluation call" if a[2].temperature == 0 else "rollout call", Engine.run,
                          lambda a, rows: engine_shape(a[0], rows))
    torch.set_num_threads(1)
    train_grpo.main(argv)


def update_shape(batch) -> dict:
    group = batch.groups[0]
    return {"groups": len(batch.groups), "prompt": group[0].prompt_len, "group_size": len(group),
            "continuation": max(len(t.ids) - t.prompt_len for t in group), "sampled": sum(sum(t.mask) for t in group)}


def engine_shape(engine, rows) -> dict:
    """The call's rows, prompts, longest row and longest forced chunk (an observation plus the token before it)."""
    def longest_forced(row):
        runs, n = [0], 0
        for m in row.mask[row.prompt_len:]:
            n = n + 1 if m == 0 else 0
            runs.append(n)
        return max(runs) + 1 if max(runs) else 1
    return {"rows": len(rows), "prompt": max(r.prompt_len for r in rows), "longest": max(len(r.ids) for r in rows),
            "forced": max(longest_forced(r) for r in rows), "row_bytes": engine.row_bytes}


# ------------------------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------------------------


def compare(folder: Path, flags: dict) -> None:
    import memory
    from agenticrec.model import read_config

    setup = memory.Setup(config=read_config(folder / "model"), ranks=2, max_context=flags["max_context"],
                         kv_rows=8, group_size=8, update_rows=0, attention="cpu", foreach=False)
    print(f"measured vs predicted peak per rank, GB ({setup.config.num_parameters / 1e9:.2f} B parameters, "
          f"{setup.config.num_hidden_layers} layers, 2 gloo ranks, bf16)\n")
    print("| phase | rank | resident at start | measured peak | predicted peak | error |\n|---|---|---|---|---|---|")
    worst = 0.0
    for rank in range(2):
        for r in json.loads((folder / f"measured_rank{rank}.json").read_text()):
            measured = sum(r["resident"].values()) + r["allocated_peak"]
            parts = memory.predict(r["phase"], setup, r["shape"], adam=r["resident"]["adam"] > 0)
            predicted = sum(parts.values())
            worst = max(worst, abs(predicted / measured - 1))
            phase = r["phase"] + (" (copy rebuilt)" if r["phase"] == "refresh" and not r["resident"]["copy"] else "")
            print(f"| {phase} | {rank} | {sum(r['resident'].values()) / GB:.3f} | {measured / GB:.3f} | "
                  f"{predicted / GB:.3f} | {predicted / measured - 1:+.1%} |")
    print(f"\nlargest error: {worst:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers kept from the 4B config")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/agenticrec-memory"))
    parser.add_argument("--turn-tokens", type=int, default=32, help="train_grpo.py's --max-turn-tokens")
    parser.add_argument("--compare-only", action="store_true", help="compare the measurements of an earlier run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        return worker(args.folder, rest)
    flags = {"max_context": 6144}
    if args.compare_only:
        return compare(args.folder, flags)
    from agenticrec.engine import kv_bytes_per_token
    from agenticrec.model import read_config
    model = args.folder / "model"
    if not (model / "config.json").is_file():
        build_model(model, args.layers)
    budget = 8 * flags["max_context"] * kv_bytes_per_token(read_config(model), __import__("torch").bfloat16)
    train = ["--model", str(model), "--dataset", "games", "--out", str(args.folder / "run"), "--dtype", "bfloat16",
             "--tools", "all", "--max-context", str(flags["max_context"]), "--group-size", "8", "--batch-size", "2",
             "--steps", "1", "--eval-instances", "2", "--max-turn-tokens", str(args.turn_tokens),
             "--activation-checkpointing", "--profiles", "none", "--threads", "1", "--no-drop-all-negative",
             "--kv-budget", f"{(budget + 1000) / GB:.9f}"]  # 8 rows (1,000 bytes over: no rounding down to 7)
    shutil.rmtree(args.folder / "run", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, "--worker",
                    "--folder", str(args.folder), *train], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    compare(args.folder, flags)


if __name__ == "__main__":
    main()
