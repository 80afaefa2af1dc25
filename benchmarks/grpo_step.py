"""One GRPO step's time split: rollout / reference forward / policy forward / backward / optimiser.

The peer-comparable config (TRL 1.16.0's GRPOTrainer took a median 57.8 s per step on this machine kind: generation
12.0 s, reference 7.7 s, forward 9.7 s, backward 28.7 s; peak 2.7 GiB): a random
Qwen3Config(vocab 8192, hidden 256, intermediate 768, 6 layers, 8 heads, 4 kv heads, head_dim 32, tied), fp32,
2 threads, 8 prompts x 8 completions, 800-token prompts, 128 sampled tokens each (no early stop), beta 0.001.
Our step samples with the KV-cached engine (one prefill per prompt, shared by its 8 completions) and scores each
group with its prompt encoded once (agenticrec.policy.group_logprobs). Also runs the CPU preset's model size.

    python benchmarks/grpo_step.py [--steps 3] [--config peer|preset|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from agenticrec.engine import Engine, SamplingParams
from agenticrec.grpo import group_advantages, grpo_loss
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.policy import group_logprobs
from agenticrec.preset import PRESET_MODEL

CONFIGS = {
    "peer": dict(cfg=dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=32, tie_word_embeddings=True),
                 prompt=800, new=128),
    "preset": dict(cfg=dict(vocab_size=4096, **PRESET_MODEL), prompt=900, new=96),
}


def one_step(model, ref, optimizer, prompts, new_tokens, group_size, seed) -> dict:
    times = {}
    t = time.perf_counter()
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    rows = Engine(model, max(map(len, prompts)) + new_tokens + 1).run(prompts, params, group_size=group_size,
                                                                      seed=seed)
    times["rollout"] = time.perf_counter() - t
    groups = [rows[i * group_size:(i + 1) * group_size] for i in range(len(prompts))]
    rewards = torch.randn(len(groups), group_size, generator=torch.Generator().manual_seed(seed))
    advantages = group_advantages(rewards)
    normalizer = float(sum(sum(r.mask) for r in rows))
    t = time.perf_counter()
    with torch.no_grad():
        refs = [group_logprobs(ref, g[0].ids[:g[0].prompt_len], [r.new_ids for r in g]) for g in groups]
    times["reference"] = time.perf_counter() - t
    times["forward"] = times["backward"] = 0.0
    optimizer.zero_grad()
    for g, adv, ref_lp in zip(groups, advantages, refs):
        t = time.perf_counter()
        logp = group_logprobs(model, g[0].ids[:g[0].prompt_len], [r.new_ids for r in g])
        mask = torch.tensor([r.mask[r.prompt_len:] for r in g], dtype=torch.float)
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask, normalizer, ref_lp, kl_coef=0.001)
        times["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        times["backward"] += time.perf_counter() - t
    t = time.perf_counter()
    optimizer.step()
    times["optimizer"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return times


def run(name: str, steps: int) -> dict:
    spec = CONFIGS[name]
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(**spec["cfg"]))
    ref = Qwen3(Qwen3Config(**spec["cfg"])).eval()
    ref.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, spec["cfg"]["vocab_size"], (spec["prompt"],), generator=g).tolist() for _ in range(8)]
    results = [one_step(model, ref, optimizer, prompts, spec["new"], 8, seed) for seed in range(steps)]
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    return {"config": name, "params": sum(p.numel() for p in model.parameters()), **median, "peak_rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per config (the median is reported)")
    parser.add_argument("--config", default="both", choices=["peer", "preset", "both"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["peer", "preset"] if args.config == "both" else [args.config]
    print("| config | rollout s | reference s | forward s | backward s | optimizer s | total s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:  # note: peak RSS is the process maximum so far (run one config for a clean figure)
        r = run(name, args.steps)
        rows.append(r)
        print(f"| {name} | {r['rollout']:.2f} | {r['reference']:.2f} | {r['forward']:.2f} | {r['backward']:.2f} "
              f"| {r['optimizer']:.3f} | {r['total']:.2f} | {r['peak_rss'] / 2**30:.2f} GiB |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
