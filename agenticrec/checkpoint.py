"""Checkpoints of a training run, and the config a trained policy carries.

- ``save_checkpoint`` / ``load_checkpoint``: sharded ``torch.distributed.checkpoint`` folders (model, optimiser,
  scheduler, every rank's data position and RNG state), written atomically, for an exact resume.
- ``export``: the trained policy as a Hugging Face folder with its tokenizer, and ``train_config.json``: the
  resolved Config it was trained with and the preset layer, if any (``agenticrec.preset``). ``evaluate.py`` and
  ``train_ppr.py`` read it back (``read_train_config``) and print what they take from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from agenticrec import distributed as D
from agenticrec.model import save_pretrained

TRAIN_CONFIG = "train_config.json"


def save_checkpoint(model, optimizer, scheduler, stream, step: int, config: dict, info: D.DistInfo, out: Path):
    """A sharded checkpoint folder written as step_N.tmp and renamed when complete; ``latest`` is replaced
    atomically last, so a crash at any moment leaves the previous checkpoint loadable. Keeps the two newest."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    root = out / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    D.barrier(info)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    positions = D.all_reduce_sum([float(stream.position if r == info.rank else 0) for r in range(info.world)], info)
    (tmp / f"rng_rank{info.rank}.bin").write_bytes(bytes(torch.get_rng_state().tolist()))
    D.barrier(info)
    if info.is_main:
        state = {"step": step, "scheduler": scheduler.state_dict(), "positions": [int(p) for p in positions],
                 "world": info.world, "config": config}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        _publish(root, tmp, final)
    D.barrier(info)


def _publish(root: Path, tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` folder to ``final``, point ``latest`` at it, and drop all but the two newest."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest = root / "latest.tmp"
    latest.write_text(final.name)
    os.replace(latest, root / "latest")
    for old in sorted(root.glob("step_*"))[:-2]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(model, optimizer, scheduler, stream, info: D.DistInfo, out: Path) -> int:
    """Restore the newest checkpoint of ``out`` in place; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        raise SystemExit(f"error: --resume but no checkpoint in {out / 'checkpoints'}")
    folder = out / "checkpoints" / pointer.read_text().strip()
    state = json.loads((folder / "trainer_state.json").read_text())
    if state["world"] != info.world:
        raise SystemExit(f"error: the checkpoint was written by {state['world']} ranks, this run has {info.world}")
    model_state, optim_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optim": optim_state}
    dcp.load(target, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    scheduler.load_state_dict(state["scheduler"])
    stream.position = state["positions"][info.rank]
    rng = folder / f"rng_rank{info.rank}.bin"
    torch.set_rng_state(torch.tensor(list(rng.read_bytes()), dtype=torch.uint8))
    return state["step"]


def export(model, info: D.DistInfo, folder: Path, tokenizer, train_config: dict) -> None:
    """The trained policy as a Hugging Face folder (transformers loads it; stage 2 starts here) with its tokenizer
    and ``train_config.json`` (``train_config``: {"script", "config", "preset", ...}). The weights are written in
    the dtype the model computes in (bf16 for a bf16 run, whose master weights are fp32), which config.json's
    ``torch_dtype`` states."""
    state = D.full_state_dict(model, info, cpu=True)
    dtype = D.compute_dtype(model)
    if info.is_main:
        for name in list(state):  # one tensor at a time: never two full copies on the host
            state[name] = state[name].to(dtype)
        save_pretrained(model, folder, state_dict=state)
        tokenizer.save_pretrained(str(folder))
        (folder / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2))
    D.barrier(info)


def train_config(script: str, cfg, preset: dict | None, **extra) -> dict:
    """What ``export`` records: the script, its resolved Config, the preset layer (None for the paper recipe)."""
    return {"script": script, "config": dataclasses.asdict(cfg), "preset": preset, **extra}


# What a later stage (train_ppr.py, evaluate.py) takes from a checkpoint's train_config.json unless a flag gives it:
# the dataset the policy was trained on and the agent's tools and budgets (the names of both scripts' Configs).
CHECKPOINT_SETTINGS = ("dataset", "tools", "max_tool_calls", "max_turn_tokens", "max_context")


def read_train_config(folder) -> dict | None:
    """The ``train_config.json`` a checkpoint folder carries, or None (a folder not written by our trainers)."""
    path = Path(folder) / TRAIN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {path} is not valid JSON ({err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise SystemExit(f"error: {path} has no \"config\" object; was it written by train_grpo.py / train_ppr.py?")
    return saved
