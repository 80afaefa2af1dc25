"""The CPU preset: a tiny Qwen3-architecture model that runs the whole pipeline on a laptop-class CPU.

Same code path as the paper recipe (Qwen3-4B-Instruct-2507 on 4 GPUs); only the size differs. The preset's
tokenizer is a small byte-level BPE trained by ``agenticrec.tokenizer.train_bpe_tokenizer`` with Qwen3's control
tokens, so the chat and tool-call format is Qwen3's, token for token.
"""

from __future__ import annotations

from agenticrec.model import Qwen3Config

# 2 layers, d=128: ~0.8M parameters besides the embeddings; a GRPO step of 8 prompts x 8 samples takes well under
# a second on 2 cores (../shared/cpu-preset-notes.md measured 0.2 s for a model of this size).
PRESET_MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, rope_theta=10_000.0, tie_word_embeddings=True,
                    max_position_embeddings=4096)


def preset_config(tokenizer) -> Qwen3Config:
    """The preset model sized to a tokenizer's vocabulary, with its EOS / pad ids."""
    return Qwen3Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **PRESET_MODEL)


def preset_tokenizer(data, folder, vocab_size: int = 4096, split_digits: bool = True):
    """The preset's byte-level BPE, trained on the dataset's item titles and the agent's fixed texts (system
    prompts, tool schemas, answer format), saved as a Hugging Face tokenizer folder; reused when present."""
    import json
    from pathlib import Path

    from agenticrec.agent import SYSTEM_NO_TOOLS, SYSTEM_WITH_TOOLS
    from agenticrec.tokenizer import load_tokenizer, tool_call_text, train_bpe_tokenizer
    from agenticrec.tools import TOOLS

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    fixed = [SYSTEM_WITH_TOOLS, SYSTEM_NO_TOOLS, json.dumps([t.schema for t in TOOLS]),
             "The user's history, oldest first:", "Candidates:", "Rank the candidates for this user.",
             "<answer>\\boxed{[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}</answer>", "assistant\n<think>",
             "I follow the last ranking.", "Past interactions, most first:", "best first:",
             *(tool_call_text(t.name, {p: "Halo 3" for p in t.parameters}) for t in TOOLS),
             *(f"I will use {t.name}." for t in TOOLS)]
    titles = [data.title(i) for i in range(len(data.items))]
    numbers = [f"[{i}] " + ", ".join(str((i * 7 + j) % 20 + 1) for j in range(10)) for i in range(1, 21)]
    return train_bpe_tokenizer(fixed * 200 + numbers * 50 + titles, folder, vocab_size=vocab_size,
                               split_digits=split_digits)
