"""Generation speed: our KV-cached engine against ``transformers``' ``generate`` on the same random weights.

Greedy decoding, 128 new tokens, prompt lengths drawn uniformly from 200-800 (ragged rows for ours, left padding
and an attention mask for transformers), batch 8 and 32, for three configs: the CPU preset's model, a
~6M-parameter model and the Qwen3-0.6B shape scaled down (real vocabulary, head_dim 128 != hidden / heads). Ours
runs its three decode steps (``Engine(decode=...)``): dynamic (active rows, used slots), static (every slot and
position, masked per row) eagerly, and that step compiled (``torch.compile``, inductor's C++ backend on CPU).
Each measurement runs in its own process (peak RSS is per process) and times the second of two identical calls
(the first compiles, for the compiled step). Prints a markdown table and one JSON line.

    python benchmarks/generation.py [--batches 8 32] [--new-tokens 128] [--threads 2]

``--rollouts``: the CPU preset's real agent workload (Games train instances, its two tools, G 8, sampled at its
temperature) through a fixed number of cache slots, without continuous batching (calls of ``--slot-groups``
groups, each running until its slowest row) and with it (one call; a finished group's slots take the next
group): sampled tokens/s and mean slot occupancy, measured side by side in one process; and the greedy
trajectories of both on ``--greedy`` instances, compared. Uses (or first builds, ~4 minutes) the preset's warm
start under ``--run`` (the Quickstart's runs/grpo).

    python benchmarks/generation.py --rollouts [--groups 64] [--slot-groups 8] [--greedy 200] [--run runs/grpo]
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
    "preset": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32),
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
    if impl.startswith("ours"):
        from agenticrec.engine import generate
        from agenticrec.model import load_pretrained
        model = load_pretrained(folder).eval()
        decode = impl.partition("-")[2] or "dynamic"
        run = lambda ps: generate(model, ps, new_tokens, decode=decode)  # noqa: E731
    else:
        from transformers import Qwen3ForCausalLM
        model = Qwen3ForCausalLM.from_pretrained(folder).eval()
        run = lambda ps: hf_generate(model, ps, new_tokens)  # noqa: E731
    run(prompts)  # the same shapes as the timed call: the compiled step compiles here
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


def rollout_benchmark(run: Path, groups: int, slot_groups: int, greedy: int, threads: int, group_size: int = 8):
    """Without and with continuous batching through slot_groups x group_size slots (see the module docstring)."""
    import dataclasses
    import statistics

    import torch

    from agenticrec import preset
    from agenticrec.agent import Rollout
    from agenticrec.data import load_dataset
    from agenticrec.distributed import init_distributed
    from agenticrec.engine import Engine
    from agenticrec.trainer import TrainingConfig, agent_config, make_toolbox

    torch.set_num_threads(threads)
    data = load_dataset("games")
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    cfg = TrainingConfig(**{k: v for k, v in preset.GRPO.items() if k in fields})
    layer = preset.layer(run / "preset" / "warm_start")
    toolbox = make_toolbox(data, cfg.tools, preset.toolbox_class(layer), sasrec_train=preset.sasrec_train(layer))
    model, tokenizer = preset.preset_policy(data, toolbox, agent_config(cfg), 0, init_distributed("cpu"), run)
    rollout = Rollout(Engine(model, cfg.max_context), tokenizer, preset.prompt_data(data, layer), toolbox,
                      agent_config(cfg))
    instances, slots = data.fixed_instances("train")[:groups], slot_groups * group_size

    def timed(calls) -> dict:
        start, trajectories, steps = time.perf_counter(), [], []
        for chunk, call_slots in calls:
            trajectories += rollout.run(chunk, group_size, seed=0, slots=call_slots)
            steps += rollout.engine.steps
        seconds = time.perf_counter() - start
        sampled = sum(sum(t.mask) for t in trajectories)
        return dict(seconds=seconds, sampled_tokens=sampled, tokens_per_s=sampled / seconds, decode_steps=len(steps),
                    occupancy=statistics.mean(steps) / slots, trajectories=trajectories)

    batched = [(instances[c:c + slot_groups], None) for c in range(0, groups, slot_groups)]
    without, with_cb = timed(batched), timed([(instances, slots)])
    rollout.cfg = dataclasses.replace(rollout.cfg, temperature=0.0)  # greedy: the same trajectories either way
    probe = data.fixed_instances("valid")[:greedy]
    alone = rollout.run(probe, slots=None)
    queued = rollout.run(probe, slots=slot_groups * group_size)
    same = sum((a.ids, a.mask, a.reward) == (b.ids, b.mask, b.reward) for a, b in zip(alone, queued))
    for r in (without, with_cb):
        r.pop("trajectories")
    return dict(groups=groups, group_size=group_size, slots=slots, without=without, continuous=with_cb,
                speedup=with_cb["tokens_per_s"] / without["tokens_per_s"], greedy_instances=len(probe),
                greedy_same=same)


def print_rollouts(result: dict) -> None:
    print(f"preset agent workload: {result['groups']} groups x G {result['group_size']}, {result['slots']} slots")
    print("| batching | sampled tokens | decode steps | seconds | sampled tok/s | mean slot occupancy |")
    print("|---|---|---|---|---|---|")
    for name, key in (("calls of a few groups (each to its slowest row)", "without"),
                      ("continuous (freed slots take the next group)", "continuous")):
        r = result[key]
        print(f"| {name} | {r['sampled_tokens']} | {r['decode_steps']} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:.1f} | {r['occupancy']:.2f} |")
    print(f"speed-up {result['speedup']:.2f}x; greedy trajectories identical with and without continuous batching: "
          f"{result['greedy_same']} / {result['greedy_instances']}")
    print(json.dumps(result))


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
    parser.add_argument("--rollouts", action="store_true", help="continuous batching on the preset's agent workload")
    parser.add_argument("--groups", type=int, default=64, help="--rollouts: groups of 8 rolled out")
    parser.add_argument("--slot-groups", type=int, default=8, help="--rollouts: cache slots, in groups")
    parser.add_argument("--greedy", type=int, default=200, help="--rollouts: instances compared greedily")
    parser.add_argument("--run", type=Path, default=Path("runs/grpo"), help="--rollouts: where the warm start is")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rollouts:
        print_rollouts(rollout_benchmark(args.run, args.groups, args.slot_groups, args.greedy, args.threads))
        return
    if args.worker:
        impl, folder, batch, new_tokens, threads = args.worker
        print(json.dumps(worker(impl, folder, int(batch), int(new_tokens), int(threads))))
        return
    rows = []
    print("| config | batch | transformers tok/s | ours dynamic | ours static (eager) | ours compiled | dynamic / "
          "transformers | same tokens (dynamic, static, compiled) | peak RSS theirs / dynamic / compiled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        with tempfile.TemporaryDirectory() as folder:
            write_model(name, Path(folder))
            for batch in args.batches:
                theirs = measure("transformers", folder, batch, args.new_tokens, args.threads)
                ours = {d: measure(f"ours-{d}", folder, batch, args.new_tokens, args.threads)
                        for d in ("dynamic", "static", "compiled")}
                reference = theirs.pop("outputs")
                same = {d: sum(a == b for a, b in zip(reference, r.pop("outputs"))) / batch for d, r in ours.items()}
                ratio = ours["dynamic"]["tokens_per_s"] / theirs["tokens_per_s"]
                rows.append(dict(config=name, batch=batch, transformers=theirs, ours=ours, ratio=ratio,
                                 same_rows=same))
                print(f"| {name} | {batch} | {theirs['tokens_per_s']:.1f} | "
                      + " | ".join(f"{ours[d]['tokens_per_s']:.1f}" for d in ours)
                      + f" | {ratio:.2f}x | " + ", ".join(f"{v:.0%}" for v in same.values())
                      + f" | {theirs['peak_rss'] / 2**20:.0f} / {ours['dynamic']['peak_rss'] / 2**20:.0f} / "
                      f"{ours['compiled']['peak_rss'] / 2**20:.0f} MiB |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
