"""Load-time and peak-memory benchmark of ``load_pretrained`` at the paper's scale.

Writes random bf16 weights with the REAL Qwen3-4B-Instruct-2507 config.json (sharded like Hugging Face, about
8 GB; cached between runs), then, in a fresh process, loads them with ``agenticrec.model.load_pretrained``, runs
a 16-token forward, and prints load time, forward time and peak RSS against the checkpoint size.
Goal: peak RSS <= 1.25x the checkpoint size.

    python benchmarks/load.py [--config PATH/config.json] [--dir /tmp/agenticrec-bench-qwen3-4b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from agenticrec import safetensors_io
from agenticrec.model import INDEX_NAME, WEIGHTS_NAME, Qwen3, Qwen3Config, expected_shapes

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "tests/fixtures/qwen3_tokenizer/Qwen3-4B-Instruct-2507/config.json"


def write_random_checkpoint(config_file: Path, folder: Path) -> None:
    hf = json.loads(config_file.read_text())
    if (folder / "config.json").exists() and json.loads((folder / "config.json").read_text())["hidden_size"] == hf[
            "hidden_size"]:
        print(f"reusing {folder}")
        return
    cfg = Qwen3Config.from_hf(hf)
    with torch.device("meta"):
        shapes = expected_shapes(Qwen3(cfg))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=g) for k, s in shapes.items()}
    t0 = time.perf_counter()
    safetensors_io.write_checkpoint(folder, state, cfg.to_hf(torch.bfloat16), 5 * 1024**3, WEIGHTS_NAME, INDEX_NAME)
    print(f"wrote {folder} in {time.perf_counter() - t0:.0f}s")


MEASURE = """
import json, sys, time, torch
from agenticrec.model import load_pretrained
def rss_kib(field): return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
t0 = time.perf_counter()
model = load_pretrained(sys.argv[1])
load_s = time.perf_counter() - t0
ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
with torch.no_grad():
    logits = model(ids)
forward_s = time.perf_counter() - t0
assert logits.shape == (1, 16, model.config.vocab_size) and torch.isfinite(logits).all()
print(json.dumps(dict(load_s=load_s, forward_s=forward_s, peak_rss=rss_kib("VmHWM"),
                      dtype=str(next(model.parameters()).dtype), params=sum(p.numel() for p in model.parameters()))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a Qwen3 config.json")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/agenticrec-bench-qwen3-4b"), help="checkpoint folder")
    args = parser.parse_args()
    write_random_checkpoint(args.config, args.dir)
    size = sum(f.stat().st_size for f in args.dir.glob("*.safetensors"))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(args.dir)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(checkpoint_bytes=size, rss_over_checkpoint=result["peak_rss"] / size)
    print("| checkpoint | params | dtype | load | 16-token forward | peak RSS | peak RSS / checkpoint |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {size / 1e9:.2f} GB | {result['params'] / 1e9:.2f} B | {result['dtype']} | {result['load_s']:.1f} s "
          f"| {result['forward_s']:.1f} s | {result['peak_rss'] / 1e9:.2f} GB | {result['rss_over_checkpoint']:.3f} "
          f"(goal <= 1.25) |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
