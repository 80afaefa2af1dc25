"""Generation speed: our KV-cached engine against ``transformers``' ``generate`` on the same random weights.

Greedy decoding, 128 new tokens, prompt lengths drawn uniformly from 200-800 (ragged rows for ours, left padding
and an attention mask for transformers), batch 8 and 32, for two configs: a ~6M-parameter model and the
Qwen3-0.6B shape scaled down (real vocabulary, head_dim 128 != hidden / heads). Each measurement runs in its own
process (peak RSS is per process) after one warm-up call. Prints a markdown table and one JSON line.

    python benchmarks/generation.py [--batches 8 32] [--new-tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "small-6M": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "qwen3-0.6B-shape/7": dict(vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=128),
}


def write_model(name: str, folder: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(**CONFIGS[name], tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    Qwen3ForCausalLM(cfg).save_pretrained(folder)


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import torch
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(200, 801, (batch,), generator=g).tolist()
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def worker(impl: str, folder: str, batch: int, new_tokens: int, threads: int) -> dict:
    """One measurement: load, warm up on a small batch, then time one greedy generation of the full batch."""
    import torch
    torch.set_num_threads(threads)
    prompts = prompts_for(batch, json.loads((Path(folder) / "config.json").read_text())["vocab_size"])
    if impl == "ours":
        from agenticrec.engine import generate
        from agenticrec.model import load_pretrained
        model = load_pretrained(folder).eval()
        run = lambda ps: generate(model, ps, new_tokens)  # noqa: E731
    else:
        from transformers import Qwen3ForCausalLM
        model = Qwen3ForCausalLM.from_pretrained(folder).eval()
        run = lambda ps: hf_generate(model, ps, new_tokens)  # noqa: E731
    run([p[:50] for p in prompts[:2]])
    start = time.perf_counter()
    outputs = run(prompts)
    seconds = time.perf_counter() - start
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    assert all(len(o) == new_tokens for o in outputs)
    return dict(seconds=seconds, tokens_per_s=batch * new_tokens / seconds, peak_rss=peak, outputs=outputs)


def hf_generate(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, width:].tolist()


def measure(impl, folder, batch, new_tokens, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, folder, str(batch), str(new_tokens), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="batch sizes")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="model configs")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, folder, batch, new_tokens, threads = args.worker
        print(json.dumps(worker(impl, folder, int(batch), int(new_tokens), int(threads))))
        return
    rows = []
    print("| config | batch | transformers tok/s | ours tok/s | ratio | same tokens | peak RSS theirs / ours |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        with tempfile.TemporaryDirectory() as folder:
            write_model(name, Path(folder))
            for batch in args.batches:
                theirs = measure("transformers", folder, batch, args.new_tokens, args.threads)
                ours = measure("ours", folder, batch, args.new_tokens, args.threads)
                same = sum(a == b for a, b in zip(theirs.pop("outputs"), ours.pop("outputs"))) / batch
                ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
                rows.append(dict(config=name, batch=batch, transformers=theirs, ours=ours, ratio=ratio,
                                 same_rows=same))
                print(f"| {name} | {batch} | {theirs['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                      f"{ratio:.2f}x | {same:.0%} | {theirs['peak_rss'] / 2**20:.0f} / "
                      f"{ours['peak_rss'] / 2**20:.0f} MiB |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
