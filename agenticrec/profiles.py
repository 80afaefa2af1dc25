"""Offline user profiles for ``get_user_profile``, written by the backbone LLM (AgenticRec, Appendix B).

The paper's ``get_user_profile`` serves a profile the LLM wrote offline from the user's history. ``build_profiles``
writes one per distinct (user, history) with the loaded model, greedy, before training: the instances are split
over ranks (each profile is generated once), gathered, and rank 0 appends them to a gzipped JSON-lines cache that
later runs reuse (``--profiles PATH``). Keys already in the cache are not generated again.

    python -m agenticrec.profiles --dataset games --model /models/Qwen3-4B-Instruct-2507 --splits test

(the command line covers splits a training run did not, e.g. test before ``evaluate.py``). An instance whose key
is missing falls back to statistics of the history's metadata (``agenticrec.tools.get_user_profile``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agenticrec import distributed as D
from agenticrec.data import Dataset, Instance, read_jsonl, write_jsonl
from agenticrec.tools import context_for, profile_key

log = logging.getLogger("agenticrec.profiles")

PROFILE_PROMPT = ("Here are the items a user chose, oldest first:\n{history}\n\nDescribe this user's preferences "
                  "in at most three sentences: preferred categories, long-term interests and recent focus.")


def load_profiles(path) -> dict[str, str]:
    """{profile_key: text} from a cache written by ``build_profiles`` ({} when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {r["key"]: r["profile"] for r in read_jsonl(path)
            if isinstance(r.get("key"), str) and isinstance(r.get("profile"), str)}


def generate_profiles(model, tokenizer, data: Dataset, histories: dict[str, tuple[int, ...]], batch_size: int = 32,
                      max_new_tokens: int = 128, progress: bool = True) -> dict[str, str]:
    """{key: profile} for each (key, history), generated greedily by ``model`` (any </think> prefix removed)."""
    from agenticrec.engine import generate
    from agenticrec.tokenizer import IM_END, render_chat

    keys, out = list(histories), {}
    stop = tokenizer.convert_tokens_to_ids(IM_END)
    for start in tqdm(range(0, len(keys), batch_size), desc="LLM profiles", unit="batch", disable=not progress):
        chunk = keys[start:start + batch_size]
        prompts = [render_chat(tokenizer, [{"role": "user", "content": PROFILE_PROMPT.format(
            history="\n".join(f"- {data.title(i)}" for i in histories[k]))}]) for k in chunk]
        for key, ids in zip(chunk, generate(model, prompts, max_new_tokens, stop_token_ids=[stop])):
            text = tokenizer.decode([i for i in ids if i != stop]).strip()
            out[key] = text.split("</think>")[-1].strip()
    return out


def build_profiles(model, tokenizer, data: Dataset, instances: list[Instance], path, info: D.DistInfo,
                   max_new_tokens: int = 128) -> dict:
    """The profiles of ``instances``: read from the cache at ``path``, the missing ones generated (split over
    ranks, each once) and appended by rank 0. Every rank returns the same dictionary."""
    path = Path(path)
    cached = load_profiles(path)
    histories = {}
    for x in instances:
        context = context_for(x, data)
        histories.setdefault(profile_key(context), context.history)
    missing = sorted(k for k in histories if k not in cached)
    if info.is_main:
        log.info("LLM profiles: %d distinct histories, %d cached in %s, %d to generate", len(histories),
                 len(histories) - len(missing), path, len(missing))
    if missing:
        mine = {k: histories[k] for k in missing[info.rank::info.world]}
        was_training = model.training
        model.eval()
        new = generate_profiles(model, tokenizer, data, mine, max_new_tokens=max_new_tokens, progress=info.is_main)
        model.train(was_training)
        gathered = {k: v for share in D.all_gather_objects(new, info) for k, v in share.items()}
        if info.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            records = [{"key": k, "profile": v} for k, v in {**cached, **gathered}.items()]
            write_jsonl(path, records)
        D.barrier(info)
        cached = load_profiles(path)
    return {k: cached[k] for k in histories if k in cached}


def main(argv: list[str] | None = None) -> None:
    from agenticrec.data import load_dataset, load_instances
    from agenticrec.model import load_pretrained
    from agenticrec.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="python -m agenticrec.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games", help="dataset name under data/")
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face Qwen3 folder (weights + tokenizer)")
    parser.add_argument("--splits", nargs="+", default=["train", "valid", "test"], help="instance splits to cover")
    parser.add_argument("--limit", type=int, default=None, help="first N instances per split")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="model device")
    parser.add_argument("--out", type=Path, required=True, help="the profile cache (.jsonl.gz), created or extended")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = load_dataset(args.dataset)
    instances = [x for split in args.splits for x in load_instances(args.dataset, split)[:args.limit]]
    model = load_pretrained(args.model, dtype=getattr(torch, args.dtype), device=args.device).eval()
    info = D.DistInfo(0, 1, 0, torch.device(args.device), None)  # one process
    profiles = build_profiles(model, load_tokenizer(args.model), data, instances, args.out, info)
    print(f"{len(profiles)} profiles for {len(instances)} instances in {args.out}")


if __name__ == "__main__":
    main()
