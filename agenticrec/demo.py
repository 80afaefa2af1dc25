"""A two-minute tour of the foundation on the CPU: ``python -m agenticrec.demo``.

It trains the preset's byte-level BPE (Qwen3's control tokens) on a small built-in corpus, builds the CPU-preset
Qwen3 at random init, renders a tool-calling chat prompt as ids, decodes a few tokens greedily, saves the model in
the Hugging Face layout, reloads it with our loader and with ``transformers``, and prints the largest logit
difference of each reload (expected: 0).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agenticrec.model import Qwen3, count_parameters, load_pretrained, save_pretrained
from agenticrec.preset import preset_config
from agenticrec.tokenizer import render_chat, tool_call_text, train_bpe_tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_similar_items", "description": "Items similar to a title.",
                                           "parameters": {"type": "object",
                                                          "properties": {"item_title": {"type": "string"}},
                                                          "required": ["item_title"]}}}]
MESSAGES = [
    {"role": "system", "content": "You are a recommender agent. Rank the candidates for the user."},
    {"role": "user", "content": "History: [0] Halo 3 [1] Mario Kart 8\nCandidates: [0] Tetris [1] Doom [2] Portal 2"},
]
CORPUS = [MESSAGES[0]["content"], MESSAGES[1]["content"], tool_call_text("get_similar_items", {"item_title": "Halo 3"}),
          "<answer>\\boxed{[2, 0, 1]}</answer>", "Super Mario Odyssey", "The Legend of Zelda", "Call of Duty"] * 50


@torch.no_grad()
def greedy(model: Qwen3, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding by full recomputation (the KV-cached engine comes with its own issue)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for the random init")
    parser.add_argument("--out", type=Path, default=None, help="folder to keep the tokenizer and model in")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="agenticrec-demo-"))
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    tokenizer = train_bpe_tokenizer(CORPUS, out / "tokenizer", vocab_size=512)
    print(f"tokenizer: byte-level BPE, {len(tokenizer)} tokens, trained in {time.perf_counter() - t0:.1f}s")
    model = Qwen3(preset_config(tokenizer)).eval()
    print(f"model: CPU-preset Qwen3, {count_parameters(model):,} parameters")

    prompt = render_chat(tokenizer, MESSAGES, TOOLS)
    t0 = time.perf_counter()
    new = greedy(model, prompt, 16)
    print(f"prompt: {len(prompt)} ids; greedy 16 tokens in {time.perf_counter() - t0:.2f}s (random weights): "
          f"{tokenizer.decode(new)!r}")

    folder = save_pretrained(model, out / "model")
    ids = torch.tensor([prompt])
    reloaded = load_pretrained(folder)
    from transformers import AutoModelForCausalLM
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    print(f"saved to {folder}")
    print(f"max |logit difference|: our reload {(reloaded(ids) - model(ids)).abs().max().item():.2e}, "
          f"transformers' reload {(theirs(ids).logits - model(ids)).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
