"""Peak memory per GPU of each phase of train_grpo.py, from the code as built, for a Qwen3 config.json and the flags.

    python benchmarks/memory.py [--config .../config.json] [--ranks 4] [--kv-budget 40] [--update-rows 2]
        [--max-context 6144] [--prompt 1304] [--observation 1024] [--gpu-gb 85.9]

Prints, for the paper recipe (Qwen3-4B-Instruct-2507 on 4 x 80 GB by default), every phase's components and its
peak, for both attention paths of the masked calls (decode, forced chunks, the update's continuation pass):
``math`` (PyTorch's fallback on A100 / A800 as built: fp32 scores materialised, K/V expanded to every query head)
and ``fused`` (flash / memory-efficient / cuDNN: no score tensor; H100 / H200 with cuDNN take it). Worst case
lengths: every row at the context limit, the update's longest continuation = context - prompt.

The phases (per rank, W ranks, N parameters, c = 2 bytes in bf16):
- resident: fp32 master shard 4N/W; AdamW's two fp32 moments 8N/W (from the first step on); the bf16 reference
  shard cN/W, and from its first forward on its root (the embedding) left gathered; the unsharded bf16 rollout
  copy cN (rollout phases only: released during the update).
- refresh (``trainer.sync_rollout``): the copy (allocated when it was released) + one gathered tensor in the
  compute dtype (the largest parameter, the embedding: its shard cast, the all-gathered tensor and one copy of it).
- rollout / evaluation call (``Engine.run``): the KV cache, rows x max_context x kv bytes per token, allocated
  once at the call's start; plus the largest transient of one forward: a prefill or forced-chunk forward of at most
  4,096 padded tokens (its layer's MLP and attention), or a decode step (logits and sampling over the vocabulary).
- update of one piece (``trainer.update``, ``--update-rows`` continuations): fp32 gradient shards 4N/W; FSDP's
  gathered parameters (the root's embedding stays gathered from the forward through the backward, plus two
  layers); the saved activations of activation checkpointing (every layer's input, and the prompt's K/V in
  ``policy.PrefixCache``); one layer recomputed in the backward; the LM head over 256 sampled positions; the
  embedding's unsharded gradient before its reduce-scatter; at the optimiser step, AdamW's temporaries.

``benchmarks/memory_measure.py`` checks these formulas against a measurement of the real code path on CPU.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from agenticrec.model import Qwen3Config

DEFAULT = Path(__file__).resolve().parents[1] / "tests/fixtures/qwen3_tokenizer/Qwen3-4B-Instruct-2507/config.json"
GB = 1e9
TOKEN_BUDGET = 4096  # agenticrec.engine.PREFILL_TOKEN_BUDGET: padded tokens per prefill / forced-chunk forward
LOGPROB_CHUNK = 256  # agenticrec.model.LOGPROB_CHUNK: positions per LM-head chunk in training


@dataclass
class Setup:
    """The config and the flags that size memory."""

    config: Qwen3Config
    ranks: int = 4
    compute_bytes: int = 2  # bf16
    max_context: int = 6144
    kv_rows: int = 44  # rows per evaluation call: what --kv-budget holds (rollout calls: whole groups of it)
    group_size: int = 8
    update_rows: int = 0  # 0 = the whole group
    reference: bool = True  # kl_coef > 0
    attention: str = "fused"  # "math" (sm80 fallback) | "fused" | "cpu" (what a CPU run does)
    foreach: bool = True  # AdamW's multi-tensor path (the default on GPU)

    @property
    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * self.compute_bytes

    @property
    def embedding(self) -> int:
        return self.config.vocab_size * self.config.hidden_size

    @property
    def layer_params(self) -> int:
        c = self.config
        return (c.num_parameters - self.embedding * (1 if c.tie_word_embeddings else 2) - c.hidden_size) \
            // c.num_hidden_layers


def resident(s: Setup, copy: bool, adam: bool) -> dict[str, float]:
    """What a rank holds between phases; ``adam``: after the first update (AdamW's moments exist, and the
    reference's root, the embedding, stays gathered after its last forward: FSDP2 does not reshard a root module
    after its forward, and the frozen reference has no backward to do it)."""
    N, W, c = s.config.num_parameters, s.ranks, s.compute_bytes
    parts = {"fp32 master weights (shard)": 4 * N / W}
    if adam:
        parts["AdamW moments (2 x fp32, shard)"] = 8 * N / W
    if s.reference:
        parts["reference (bf16 shard)"] = c * N / W
        if adam:
            parts["reference's root left gathered (bf16 embedding)"] = c * s.embedding * (1 - 1 / W)
    if copy:
        parts["rollout copy (bf16, unsharded)"] = c * N
    return parts


def layer_forward(s: Setup, rows: int, tokens: int, kv_len: int, masked: bool) -> float:
    """The largest transient of one decoder layer's inference forward over ``rows`` x ``tokens`` queries attending
    to ``kv_len`` slots: the MLP's three [T, I] tensors (gate's activation, up, their product) beside the residual
    stream and its fp32 norm, or the attention's transients (math: fp32 scores and softmax, K/V expanded)."""
    cfg, c, T = s.config, s.compute_bytes, rows * tokens
    mlp = T * (3 * cfg.intermediate_size * c + cfg.hidden_size * (2 * c + 4))
    attention = 0.0
    if masked and s.attention in ("math", "cpu"):
        scores = 2 * rows * cfg.num_attention_heads * tokens * kv_len * 4  # fp32 scores and their softmax
        expanded = 2 * rows * cfg.num_attention_heads * kv_len * cfg.head_dim * c  # K and V for every query head
        attention = scores + expanded
    return max(mlp, attention)


def engine_call(s: Setup, rows: int, prompt: int, longest: int, forced: int, row_bytes: float | None = None,
                prompts: int | None = None) -> dict[str, float]:
    """One ``Engine.run`` of ``rows`` rows: the cache and its largest transient forward."""
    V = s.config.vocab_size
    row_bytes = row_bytes if row_bytes is not None else s.max_context * s.kv_bytes_per_token
    prompts = prompts or rows
    per_prefill = max(1, min(prompts, TOKEN_BUDGET // prompt))
    prefill = layer_forward(s, per_prefill, prompt, prompt, masked=False) + 4 * prompts * V
    decode = layer_forward(s, rows, 1, longest, masked=True) + rows * V * (s.compute_bytes + 5 * 4)
    chunk_rows = max(1, min(rows, TOKEN_BUDGET // max(forced, 1)))
    chunk = layer_forward(s, chunk_rows, forced, longest, masked=True) if forced > 1 else 0.0
    return {f"KV cache ({rows} rows x {s.max_context} tokens)": rows * row_bytes,
            "largest forward transient (prefill / decode / forced chunk)": max(prefill, decode, chunk)}


def update_piece(s: Setup, prompt: int, continuation: int, sampled: int, adam: bool) -> dict[str, float]:
    """One forward + backward of ``update_rows`` continuations of a group, then the optimiser step."""
    cfg, c, W, N = s.config, s.compute_bytes, s.ranks, s.config.num_parameters
    g = s.update_rows or s.group_size
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    saved = L * H * c * (prompt + g * continuation) + L * 2 * prompt * cfg.num_key_value_heads * cfg.head_dim * c
    recompute = layer_forward(s, g, continuation, prompt + continuation, masked=True) * (3 if s.attention in (
        "math", "cpu") else 1) + 2 * g * (prompt + continuation) * cfg.num_key_value_heads * cfg.head_dim * c
    lm_head = min(sampled, LOGPROB_CHUNK) * cfg.vocab_size * (c + 4 * 4)
    backward = {"gradients (fp32 shard)": 4 * N / W,
                "gathered root (embedding / LM head, bf16)": c * s.embedding,
                "two gathered layers (bf16)": 2 * c * s.layer_params,
                "saved activations (checkpointed layer inputs, prompt K/V)": saved,
                "one layer recomputed in the backward": recompute,
                "LM head over 256 sampled positions": lm_head,
                "embedding gradient before its reduce-scatter (bf16 + fp32)": (c + 4) * s.embedding}
    step = {"gradients (fp32 shard)": 4 * N / W, "AdamW moments (2 x fp32, shard)": 0.0 if adam else 8 * N / W,
            "AdamW temporaries": 4 * N / W if s.foreach else 2 * 4 * s.embedding / W}
    return backward if sum(backward.values()) >= sum(step.values()) else step


def predict(phase: str, s: Setup, shape: dict, adam: bool) -> dict[str, float]:
    """A phase's components for the lengths in ``shape`` (benchmarks/memory_measure.py records them)."""
    if phase == "refresh":
        parts = resident(s, copy=True, adam=adam)
        parts["the embedding gathered (its shard cast, the gathered tensor, one copy)"] = s.compute_bytes * \
            s.embedding * (1 / s.ranks + 2)
        return parts
    if phase in ("rollout call", "evaluation call"):
        prompts = shape["rows"] // s.group_size if phase == "rollout call" else shape["rows"]
        return {**resident(s, copy=True, adam=adam),
                **engine_call(s, shape["rows"], shape["prompt"], shape["longest"], shape["forced"],
                              shape.get("row_bytes"), prompts)}
    if phase == "update":
        return {**resident(s, copy=False, adam=adam),
                **update_piece(s, shape["prompt"], shape["continuation"], shape["sampled"], adam)}
    raise ValueError(f"unknown phase {phase!r}")


CUDA_OVERHEAD = 2e9  # CUDA context, cuBLAS / NCCL workspaces and allocator slack: an estimate, not measured here


def recipe_table(s: Setup, prompt: int, observation: int) -> dict[str, dict[str, float]]:
    """Every phase at its worst case for the recipe: rows at the context limit, the longest continuation."""
    continuation = s.max_context - prompt
    call = {"rows": s.kv_rows, "prompt": prompt, "longest": s.max_context, "forced": observation}
    groups = {**call, "rows": s.kv_rows // s.group_size * s.group_size}
    phases = {"refresh": predict("refresh", s, {}, adam=True),
              "rollout call": predict("rollout call", s, groups, adam=True),
              "evaluation call": predict("evaluation call", s, call, adam=True),
              "update (one piece)": predict("update", s, {"prompt": prompt, "continuation": continuation,
                                                           "sampled": continuation}, adam=True)}
    return {name: {**parts, "CUDA context, workspaces, allocator slack (estimate)": CUDA_OVERHEAD}
            for name, parts in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT, help="a Qwen3 config.json")
    parser.add_argument("--ranks", type=int, default=4, help="FSDP ranks (GPUs)")
    parser.add_argument("--kv-budget", type=float, default=40.0, help="train_grpo.py's --kv-budget, GB")
    parser.add_argument("--update-rows", type=int, default=2, help="train_grpo.py's --update-rows")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-context", type=int, default=6144)
    parser.add_argument("--prompt", type=int, default=1304, help="longest prompt (Games, all tools, real tokenizer)")
    parser.add_argument("--observation", type=int, default=1024, help="longest forced chunk (a tool response)")
    parser.add_argument("--gpu-gb", type=float, default=85.9, help="GPU memory (80 GiB = 85.9 GB)")
    parser.add_argument("--headroom", type=float, default=0.10, help="the share of the GPU left free")
    args = parser.parse_args()
    cfg = Qwen3Config.from_hf(json.loads(args.config.read_text()))
    base = Setup(cfg, ranks=args.ranks, max_context=args.max_context, group_size=args.group_size,
                 update_rows=args.update_rows)
    rows = int(args.kv_budget * GB // (args.max_context * base.kv_bytes_per_token))
    print(f"{args.config.parent.name}: {cfg.num_parameters / 1e9:.2f} B parameters, {args.ranks} GPUs of "
          f"{args.gpu_gb:g} GB; --kv-budget {args.kv_budget:g} -> {rows} rows per evaluation call, "
          f"{rows // args.group_size} groups per rollout call; --update-rows "
          f"{args.update_rows}; limit with {args.headroom:.0%} headroom: {args.gpu_gb * (1 - args.headroom):.1f} GB")
    fits = True
    for attention in ("math", "fused"):
        s = Setup(cfg, ranks=args.ranks, max_context=args.max_context, kv_rows=rows, group_size=args.group_size,
                  update_rows=args.update_rows, attention=attention)
        print(f"\n### attention: {attention}\n\n| phase | component | GB |\n|---|---|---|")
        for phase, parts in recipe_table(s, args.prompt, args.observation).items():
            for name, value in parts.items():
                print(f"| {phase} | {name} | {value / GB:.1f} |")
            total = sum(parts.values()) / GB
            fits &= total <= args.gpu_gb * (1 - args.headroom)
            print(f"| **{phase}** | **peak** | **{total:.1f}** |")
    print(f"\nevery phase within {args.gpu_gb * (1 - args.headroom):.1f} GB: {'yes' if fits else 'NO'}")


if __name__ == "__main__":
    main()
