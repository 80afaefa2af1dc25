"""Per-GPU memory estimate of the paper recipe (bf16 FSDP2, N ranks) from a real Qwen3 config.json.

    python benchmarks/memory.py [--config .../Qwen3-4B-Instruct-2507/config.json] [--ranks 4]
        [--rollout-rows 64] [--context 6144] [--train-tokens 12000]

Components (bytes per GPU): fp32 master weights, fp32 gradients and AdamW's two fp32 moments, all sharded 1/N;
the frozen reference, sharded 1/N in fp32; the unsharded bf16 rollout copy (generation never runs on sharded
weights, see agenticrec/distributed.py); the KV cache of one rollout micro-batch at full context; training
activations of one group with activation checkpointing (layer inputs kept, one layer recomputed at a time) plus
the one unsharded bf16 layer FSDP gathers at a time. Estimates, not measurements.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agenticrec.model import Qwen3Config

DEFAULT = Path(__file__).resolve().parents[1] / "tests/fixtures/qwen3_tokenizer/Qwen3-4B-Instruct-2507/config.json"
GB = 1e9


def estimate(cfg: Qwen3Config, ranks: int, rollout_rows: int, context: int, train_tokens: int) -> dict[str, float]:
    P = cfg.num_parameters
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    layer_params = (P - cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)) / L
    kv_per_token = L * cfg.num_key_value_heads * cfg.head_dim * 2 * 2  # k and v, bf16
    # saved per token in one layer's backward (bf16): its input, q/k/v/attention output, MLP input, gate, up, act
    layer_activation = 2 * (4 * d + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim + 3 * f)
    return {
        "params (fp32 master, sharded)": 4 * P / ranks,
        "gradients (fp32, sharded)": 4 * P / ranks,
        "AdamW moments (2 x fp32, sharded)": 8 * P / ranks,
        "reference model (fp32, sharded)": 4 * P / ranks,
        "rollout copy (bf16, unsharded)": 2 * P,
        f"KV cache ({rollout_rows} rows x {context} tokens, bf16)": kv_per_token * rollout_rows * context,
        f"activations ({train_tokens} tokens, checkpointed)": train_tokens * (2 * d * L + layer_activation),
        "LM-head chunk (8 rows x 256 positions x vocab, fp32, x3)": 3 * 4 * 8 * 256 * cfg.vocab_size,
        "one gathered layer (bf16)": 2 * layer_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT, help="a Qwen3 config.json")
    parser.add_argument("--ranks", type=int, default=4, help="FSDP ranks (GPUs)")
    parser.add_argument("--rollout-rows", type=int, default=64, help="rows per rollout micro-batch per GPU")
    parser.add_argument("--context", type=int, default=6144, help="max tokens per trajectory")
    parser.add_argument("--train-tokens", type=int, default=12000, help="tokens of one group in the update")
    args = parser.parse_args()
    cfg = Qwen3Config.from_hf(json.loads(args.config.read_text()))
    parts = estimate(cfg, args.ranks, args.rollout_rows, args.context, args.train_tokens)
    print(f"{args.config.parent.name}: {cfg.num_parameters / 1e9:.2f} B parameters, {args.ranks} GPUs\n")
    print("| component | GB per GPU |\n|---|---|")
    for name, value in parts.items():
        print(f"| {name} | {value / GB:.1f} |")
    print(f"| **total (worst case: all rows at full context)** | **{sum(parts.values()) / GB:.1f}** |")
    print(json.dumps({k: round(v / GB, 2) for k, v in parts.items()}))


if __name__ == "__main__":
    main()
