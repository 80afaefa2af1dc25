"""Stage 1 of AgenticRec: list-wise GRPO for a tool-calling recommender agent.

    python train_grpo.py                                      # the CPU preset (tiny Qwen3 + warm start, Games)
    torchrun --nproc_per_node 4 train_grpo.py --model /models/Qwen3-4B-Instruct-2507 --dtype bfloat16

How this differs from textbook GRPO (docs/grpo.md has the math):
1. Rollouts are multi-turn and tool-integrated: observations are forced tokens with loss mask 0, and the mask is
   built during the rollout, never inferred from ids.
2. The reward is list-wise: NDCG@10 of the final ranking, -0.5 for a valid miss, -1 for an invalid trajectory,
   +0.1 for a first-place hit after a tool call (agenticrec.reward).
3. Advantages are group-mean (the paper; no std division), which Prop 4.1 shows is unbiased up to (G-1)/G;
   `--advantage std` and `rloo` are options.
4. Dynamic sampling drops groups whose rewards are all negative and refills the batch, so the update size stays
   fixed; groups that could not be refilled are padded with zero-weight groups (no loss; logged).
5. The KL to the frozen reference is a k3 penalty in the loss (beta 1e-3), not a reward term; beta 0 loads no
   reference model.
6. The loss is a token mean over the GLOBAL batch (the normaliser is all-reduced), so its gradient does not depend
   on how groups are spread over ranks or micro-batches.
7. The update encodes each group's shared prompt once (agenticrec.policy.group_logprobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agenticrec import distributed as D
from agenticrec.agent import (CONTEXT_LIMIT, TOOL_BUDGET_EXCEEDED, TOOLS_DISABLED, TURN_TOKEN_LIMIT, AgentConfig,
                              Rollout)
from agenticrec.parsing import Reason
from agenticrec.data import load_dataset, load_instances
from agenticrec.engine import Engine
from agenticrec.grpo import advantage_stats, group_advantages, grpo_loss, keep_group
from agenticrec.model import Qwen3, load_pretrained, save_pretrained
from agenticrec.policy import group_logprobs
from agenticrec.reward import ranking_metrics
from agenticrec.sasrec import load_or_train
from agenticrec.tools import TOOLS, Toolbox

log = logging.getLogger("train_grpo")


@dataclass
class Config:
    model: str = "preset"  # a Hugging Face Qwen3 folder, or "preset" (tiny Qwen3 + BPE + scripted warm start)
    dataset: str = "games"  # a dataset under data/
    out: str = "runs/grpo"  # output folder: metrics.jsonl, checkpoints/, final/
    epochs: float = 3.0  # passes over the train instances (ignored when --steps > 0)
    steps: int = 0  # optimiser steps; 0 = derived from --epochs
    batch_size: int = 64  # groups (instances) per step, over all ranks
    group_size: int = 8  # rollouts per instance (G)
    lr: float = 1e-6  # AdamW learning rate (after warm-up)
    warmup_steps: int = 10  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clipping
    temperature: float = 0.6  # sampling temperature; training log-probs use the same
    max_tool_calls: int = 10  # T_max: one more makes the trajectory invalid
    max_turn_tokens: int = 512  # sampled tokens per turn
    max_context: int = 6144  # tokens per trajectory (prompt + turns + observations)
    max_title_chars: int = 0  # shorten titles in prompts (0 = no limit)
    tools: str = "all"  # comma-separated tool names, "all", or "none" (reasoning-only ablation)
    kl_coef: float = 1e-3  # beta; 0 loads no reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3
    clip_eps: float = 0.2  # PPO clip epsilon
    advantage: str = "mean"  # mean (paper) | std | rloo
    aggregation: str = "token_mean"  # token_mean | sequence_mean (over the global batch)
    mu: int = 1  # optimiser updates per rollout batch (1: ratio exactly 1)
    drop_all_negative: bool = True  # dynamic sampling: drop groups whose rewards are all negative
    drop_all_equal: bool = False  # also drop groups with zero reward variance
    refill_rounds: int = 3  # extra rollout rounds to refill dropped groups
    rollout_groups: int = 0  # groups per engine call (bounds the KV cache); 0 = all of this rank's groups at once
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward pass (long contexts)
    eval_every: int = 0  # steps between valid evaluations (0 = only before and after training)
    eval_instances: int = 1000  # valid instances per evaluation (greedy)
    eval_chunk: int = 250  # instances per engine call in evaluation (bounds the KV cache)
    checkpoint_every: int = 50  # steps between checkpoints
    resume: bool = False  # continue from out/checkpoints/latest
    dtype: str = "float32"  # float32 | bfloat16 (FSDP mixed precision on GPU)
    threads: int = 2  # torch threads per process (pinned: budget by steps, not wall clock)
    seed: int = 0  # all randomness derives from (seed, step, rank)
    stop_after: int = 0  # stop after this many steps of this run (tests of resume); 0 = no stop


# The CPU preset (../shared/cpu-preset-notes.md, docs/grpo.md "The CPU preset"): the two no-argument ranking tools
# (popularity, similar users' taste) whose orders the warm start copies; short titles keep prompts near 800 tokens;
# lr 1e-4 (the tiny model moves little at the paper's 1e-6) with a KL of 0.01 to the warm start; steps, not time.
PRESET = dict(batch_size=8, lr=1e-4, warmup_steps=5, max_turn_tokens=96, max_context=2048, max_title_chars=24,
              tools="candidates_analyze,get_similar_users", steps=30, kl_coef=0.01, eval_instances=1000,
              checkpoint_every=10, max_tool_calls=4)


PRESET_MARKER = "agenticrec_preset.json"  # written into out/final by a preset run: train_ppr.py applies its preset


def parse_args(argv=None) -> Config:
    given = parse_flags(Config, Path(__file__), __doc__, argv)
    preset = PRESET if given.get("model", Config.model) == "preset" else {}
    return Config(**{**preset, **given})


def parse_flags(config_class, script: Path, doc: str, argv=None) -> dict:
    """One flag per field of a Config dataclass (``--batch-size``; booleans get ``--x / --no-x``), its trailing
    comment as the help; returns only the flags given, so that presets can fill the rest."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    comments = field_comments(script)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=comments[f.name])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=comments[f.name])
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def field_comments(script: Path) -> dict[str, str]:
    """Each Config field's trailing comment in ``script``, used as its --help text."""
    source = script.read_text().split("class Config:")[1].split("\n\n\n")[0]
    out = {}
    for line in source.splitlines():
        if ":" in line and "#" in line:
            out[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    return out


# ------------------------------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------------------------------


def build_policy(cfg: Config, data, toolbox, agent_cfg, info, out: Path):
    """(model, tokenizer). The preset trains its tokenizer and warm-starts a tiny Qwen3 (cached in out/)."""
    from agenticrec.tokenizer import load_tokenizer
    if cfg.model != "preset":
        dtype = torch.float32 if info.world > 1 else getattr(torch, cfg.dtype)  # FSDP keeps fp32 master weights
        return load_pretrained(cfg.model, dtype=dtype, device=info.device), load_tokenizer(cfg.model)
    from agenticrec.preset import preset_config, preset_tokenizer
    from agenticrec.warmstart import warm_start
    tokenizer = preset_tokenizer(data, out / "preset" / "tokenizer", split_digits=False)
    folder = out / "preset" / "warm_start"
    if (folder / "config.json").is_file():
        return load_pretrained(folder, device=info.device), tokenizer
    torch.manual_seed(cfg.seed)
    model = Qwen3(preset_config(tokenizer)).to(info.device)
    if info.is_main:
        report = warm_start(model, tokenizer, data, toolbox, load_instances(data.name, "train"),
                            load_instances(data.name, "valid")[-64:], agent_cfg)
        log.info("warm start: %s", {k: v for k, v in report.items() if k != "history"})
        (out / "preset" / "warm_start_report.json").write_text(json.dumps(report, indent=2))
        if not report["passed_gate"]:  # GRPO on a policy without valid answers sees only -1: nothing to learn
            save_pretrained(model, out / "preset" / "warm_start_failed")
            raise SystemExit(f"error: the warm start stopped at step {report['steps']} with a greedy valid rate of "
                             f"{report['valid_rate']:.2f}, below its gate; see {out / 'preset'}/warm_start_report.json")
        save_pretrained(model, folder)
    D.barrier(info)
    return load_pretrained(folder, device=info.device), tokenizer


def make_toolbox(cfg: Config, data) -> Toolbox:
    enabled = None if cfg.tools in ("all", "none") else tuple(cfg.tools.split(","))
    unknown = set(enabled or ()) - {t.name for t in TOOLS}
    if unknown:
        raise SystemExit(f"error: unknown tool(s) in --tools: {', '.join(sorted(unknown))}")
    return Toolbox(data, load_or_train(data, load_instances(data.name, "valid")), enabled=enabled)


def lr_lambda(cfg: Config):
    return lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps))


# ------------------------------------------------------------------------------------------------------------------
# Rollouts with dynamic sampling
# ------------------------------------------------------------------------------------------------------------------


class DataStream:
    """This rank's train instances, in an order fixed by (seed, epoch); ``position`` is saved in checkpoints."""

    def __init__(self, instances, seed: int, info: D.DistInfo):
        self.instances, self.seed, self.info, self.position = instances, seed, info, 0

    def take(self, n: int):
        out = []
        for _ in range(n):
            epoch, index = divmod(self.position * self.info.world + self.info.rank, len(self.instances))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.instances))
            out.append(self.instances[order[index]])
            self.position += 1
        return out


def collect_groups(rollout: Rollout, stream: DataStream, cfg: Config, step: int, info: D.DistInfo):
    """This rank's groups for one step: roll out, drop uninformative groups, refill; pad what could not be filled
    with zero-weight groups so that every rank runs the same number of forward passes."""
    need = cfg.batch_size // info.world
    kept, dropped, all_trajectories = [], [], []
    for round_ in range(1 + cfg.refill_rounds):
        instances = stream.take(need - len(kept))
        chunk = cfg.rollout_groups or len(instances)
        trajectories = []
        for c in range(0, len(instances), chunk):
            seed = int(hashlib.sha256(f"{cfg.seed}-{step}-{info.rank}-{round_}-{c}".encode()).hexdigest()[:8], 16)
            trajectories += rollout.run(instances[c:c + chunk], group_size=cfg.group_size, seed=seed)
        all_trajectories += trajectories
        groups = [trajectories[g * cfg.group_size:(g + 1) * cfg.group_size] for g in range(len(instances))]
        rewards = torch.tensor([[t.reward for t in group] for group in groups])
        keep = keep_group(rewards, cfg.drop_all_negative, cfg.drop_all_equal)
        kept += [g for g, k in zip(groups, keep) if k]
        dropped += [g for g, k in zip(groups, keep) if not k]
        if len(kept) == need:
            break
    padded = max(0, need - len(kept))
    weights = [1.0] * len(kept) + [0.0] * padded
    return kept + dropped[:padded], weights, all_trajectories, len(dropped), padded


# ------------------------------------------------------------------------------------------------------------------
# The update
# ------------------------------------------------------------------------------------------------------------------


def update(model, ref_model, optimizer, groups, weights, cfg: Config, info: D.DistInfo) -> dict:
    """mu optimiser steps on this rank's groups; the loss normaliser is global (all-reduced)."""
    rewards = torch.tensor([[t.reward for t in group] for group in groups])
    advantages = group_advantages(rewards, cfg.advantage)
    batches = [_group_tensors(group, info.device) for group in groups]
    counts = [float(m.sum()) if cfg.aggregation == "token_mean" else float(len(g)) for (_, _, m), g in
              zip(batches, groups)]
    local = sum(w * c for w, c in zip(weights, counts))  # padded (zero-weight) groups do not dilute the mean
    normalizer = D.all_reduce_sum([local], info)[0] / info.world
    if normalizer == 0:  # every group on every rank was dropped: nothing to learn from (the same on all ranks)
        return {"skipped_update": 1.0, "loss": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "tokens": 0.0,
                "neg_logp_sum": 0.0, "grad_norm": 0.0}
    old = None
    if cfg.mu > 1:
        with torch.no_grad():
            old = [group_logprobs(model, p, c, cfg.temperature, m) for p, c, m in batches]
    refs = [None] * len(batches)
    if ref_model is not None:
        with torch.no_grad():
            refs = [group_logprobs(ref_model, p, c, cfg.temperature, m) for p, c, m in batches]
    metrics = Counter()
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, (prompt, continuations, mask) in enumerate(batches):
            logp = group_logprobs(model, prompt, continuations, cfg.temperature, mask)
            old_logp = old[i] if old is not None else logp.detach()
            loss_mask = mask * weights[i]  # a padded group carries no loss: neither its advantages nor its KL
            loss, m = grpo_loss(logp, old_logp, advantages[i].to(logp.device), loss_mask, normalizer, refs[i],
                                cfg.clip_eps, cfg.kl_coef, cfg.kl_estimator, cfg.aggregation)
            loss.backward()
            tokens = m["tokens"]
            metrics.update({"loss": loss.item(), "kl_sum": m["kl"] * tokens, "clip_sum": m["clip_frac"] * tokens,
                            "tokens": tokens, "neg_logp_sum": float(-(logp.detach() * loss_mask).sum())})
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm):  # never let one bad batch poison the weights; counted in the logs
            log.warning("non-finite gradient norm; update skipped")
            metrics["nonfinite_skipped"] += 1
            continue
        optimizer.step()
    metrics["grad_norm"] = float(grad_norm)
    trained = advantages * torch.tensor(weights)[:, None]  # what the loss sees: 0 for a padded group
    metrics.update({f"adv_{k}": v for k, v in advantage_stats(trained, rewards).items()})
    return dict(metrics)


def _group_tensors(group, device):
    """(prompt ids, continuations after the prompt, their loss mask [G, L]) for one group."""
    prompt = group[0].ids[:group[0].prompt_len]
    continuations = [t.ids[t.prompt_len:] for t in group]
    L = max(len(c) for c in continuations)
    mask = torch.tensor([t.mask[t.prompt_len:] + [0] * (L - len(c)) for t, c in zip(group, continuations)],
                        dtype=torch.float, device=device)
    return prompt, continuations, mask


# ------------------------------------------------------------------------------------------------------------------
# Evaluation, logging, checkpoints
# ------------------------------------------------------------------------------------------------------------------


def greedy_rollout(rollout: Rollout) -> Rollout:
    """The same rollout (engine, tools, budgets) with greedy decoding."""
    return Rollout(rollout.engine, rollout.tokenizer, rollout.data, rollout.toolbox,
                   dataclasses.replace(rollout.cfg, temperature=0.0))


def greedy_run(rollout: Rollout, instances, chunk: int, desc: str | None = None) -> list:
    """Greedy trajectories of ``instances``, ``chunk`` per engine call (bounds the KV cache); a tqdm bar when
    ``desc`` is given."""
    greedy = greedy_rollout(rollout)
    starts = tqdm(range(0, len(instances), chunk), desc=desc, leave=False, disable=desc is None)
    return [t for c in starts for t in greedy.run(instances[c:c + chunk])]


def evaluate(rollout: Rollout, instances, info: D.DistInfo, chunk: int = 250) -> tuple[dict, list[int]]:
    """Greedy rollouts on fixed valid instances (split over ranks, ``chunk`` per engine call): metrics summed over
    ranks, and every instance's target rank in order (0 = absent or invalid; for paired comparisons)."""
    trajectories = greedy_run(rollout, instances[info.rank::info.world], chunk)
    ranks = [0.0] * len(instances)
    for i, t in zip(range(info.rank, len(instances), info.world), trajectories):
        ranks[i] = float(t.rank or 0)
    return summarize(trajectories, info, prefix="eval_"), [int(r) for r in D.all_reduce_sum(ranks, info)]


def evaluate_and_save(rollout: Rollout, instances, info: D.DistInfo, out: Path, step: int, chunk: int) -> dict:
    """``evaluate``, with every instance's target rank kept in out/evals/step_N.json for the final paired test."""
    metrics, ranks = evaluate(rollout, instances, info, chunk)
    if info.is_main:
        (out / "evals").mkdir(exist_ok=True)
        (out / "evals" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, **metrics, "ranks": ranks}))
    return metrics


def final_report(out: Path, data, toolbox, instances, steps: int) -> dict:
    """Before vs after GRPO on the same valid instances (paired bootstrap CI of the NDCG@10 gain), each ranking
    tool's own order copied verbatim, and the per-tool call rates; printed and written to out/report.json."""
    from agenticrec.baselines import evaluate_scorer, tool_ordering_scorer
    from agenticrec.stats import paired_bootstrap
    from agenticrec.tools import RANKING_TOOLS
    before, after = (json.loads((out / "evals" / f"step_{s:06d}.json").read_text()) for s in (0, steps))
    rows = {"start (step 0)": before, f"GRPO (step {steps})": after}
    rows.update({f"{name}, copied": {f"eval_{k}": v for k, v in evaluate_scorer(
        data, instances, tool_ordering_scorer(data, toolbox, name)).items()}
        for name in RANKING_TOOLS if name in toolbox.names})
    gain = paired_bootstrap(*([ranking_metrics(r or None)["N@10"] for r in e["ranks"]] for e in (before, after)))
    lines = [f"valid instances: {len(instances)}", f"{'policy':<34}{'H@1':>7}{'H@10':>7}{'N@5':>7}{'N@10':>7}"]
    lines += [f"{name:<34}" + "".join(f"{r[f'eval_{k}']:>7.3f}" for k in ("H@1", "H@10", "N@5", "N@10"))
              for name, r in rows.items()]
    lines.append(f"NDCG@10 gain of GRPO: {gain['diff']:+.4f}, paired bootstrap 95% CI [{gain['lo']:+.4f}, "
                 f"{gain['hi']:+.4f}]")
    names = [t.name for t in toolbox.tools]
    lines.append("tool calls per rollout (answered after it): " + "; ".join(
        f"{n} {before[f'eval_calls_{n}']:.2f} ({before[f'eval_last_{n}']:.2f}) -> {after[f'eval_calls_{n}']:.2f} "
        f"({after[f'eval_last_{n}']:.2f})" for n in names))
    print("\n".join(lines), flush=True)
    report = {"gain_ndcg10": gain, "rows": {k: {m: v for m, v in r.items() if m != "ranks"} for k, r in rows.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# every reason a trajectory can be invalid for: the parser's and the agent's own
INVALID_REASONS = sorted({r.value for r in Reason} | {TOOL_BUDGET_EXCEEDED, TOOLS_DISABLED, TURN_TOKEN_LIMIT,
                                                      CONTEXT_LIMIT})


def summarize(trajectories, info: D.DistInfo, prefix: str = "") -> dict:
    """Rollout statistics, reduced over ranks: reward, metrics, invalid reasons, tool use, tokens."""
    keys = ["n", "reward", "valid", "truncated", "tool_calls", "tool_errors", "prompt", "generated", "observation",
            "H@1", "H@5", "H@10", "N@5", "N@10"] + [f"calls_{t.name}" for t in TOOLS] + \
        [f"last_{t.name}" for t in TOOLS]
    sums = Counter()
    for t in trajectories:
        sums.update({"n": 1, "reward": t.reward, "valid": t.invalid_reason is None,
                     "truncated": t.invalid_reason in (TURN_TOKEN_LIMIT, CONTEXT_LIMIT),
                     "tool_calls": len(t.tool_calls), "tool_errors": t.tool_errors, **t.tokens,
                     **ranking_metrics(t.rank)})
        sums.update(Counter(f"calls_{c.name}" for c in t.tool_calls))
        if t.tool_calls:  # the observation the answer came after: which evidence the policy acted on
            sums[f"last_{t.tool_calls[-1].name}"] += 1
        if t.invalid_reason:
            sums[f"invalid_{t.invalid_reason}"] += 1
    names = keys + [f"invalid_{r}" for r in INVALID_REASONS]
    totals = dict(zip(names, D.all_reduce_sum([float(sums[k]) for k in names], info)))
    n = max(1.0, totals["n"])
    out = {f"{prefix}{k}": totals[k] / n for k in names if k != "n"}
    out[f"{prefix}tool_error_rate"] = totals["tool_errors"] / max(1.0, totals["tool_calls"])
    out[f"{prefix}n"] = totals["n"]
    return out


def group_stats(trajectories, group_size: int, info: D.DistInfo) -> dict:
    """Reward spread over every group rolled out this step (kept or dropped), reduced over ranks: a zero-std
    group carries no learning signal, and a run where they dominate is not learning."""
    rewards = torch.tensor([t.reward for t in trajectories]).view(-1, group_size)
    s = D.all_reduce_sum([float(len(rewards)), float((rewards.std(-1) == 0).sum()) if group_size > 1 else
                          float(len(rewards)), float(rewards.sum()), float((rewards ** 2).sum())], info)
    n = max(1.0, s[0] * group_size)
    return {"zero_std_groups": s[1] / max(1.0, s[0]), "reward_std": max(0.0, s[3] / n - (s[2] / n) ** 2) ** 0.5}


def save_checkpoint(model, optimizer, scheduler, stream, step: int, cfg: Config, info: D.DistInfo, out: Path):
    """A sharded torch.distributed.checkpoint folder written as step_N.tmp and renamed when complete; ``latest``
    is replaced atomically last, so a crash at any moment leaves the previous checkpoint loadable."""
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
                 "world": info.world, "config": dataclasses.asdict(cfg)}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest = root / "latest.tmp"
        latest.write_text(final.name)
        os.replace(latest, root / "latest")
        for old in sorted(root.glob("step_*"))[:-2]:  # keep the two newest
            if not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    D.barrier(info)


def load_checkpoint(model, optimizer, scheduler, stream, info: D.DistInfo, out: Path) -> int:
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


def export(model, info: D.DistInfo, folder: Path, tokenizer=None) -> None:
    """The trained policy as a Hugging Face folder with its tokenizer (transformers loads it; stage 2 starts here)."""
    state = D.full_state_dict(model, info, cpu=True)
    if info.is_main:
        save_pretrained(model, folder, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
    D.barrier(info)


# ------------------------------------------------------------------------------------------------------------------
# Main: config -> setup -> loop (rollout -> reward -> advantage -> update -> log -> checkpoint)
# ------------------------------------------------------------------------------------------------------------------


def start_run(cfg) -> tuple[D.DistInfo, Path]:
    """Logging, pinned threads, the process group and the output folder: the start of every training script."""
    warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
    warnings.filterwarnings("ignore", message=".*lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(cfg.threads)
    info = D.init_distributed()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return info, out


def agent_config(cfg) -> AgentConfig:
    """The rollout settings a training Config names."""
    return AgentConfig(max_tool_calls=cfg.max_tool_calls, max_turn_tokens=cfg.max_turn_tokens,
                       max_context=cfg.max_context, use_tools=cfg.tools != "none",
                       max_title_chars=cfg.max_title_chars or None, temperature=cfg.temperature)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    info, out = start_run(cfg)
    if cfg.batch_size % info.world:
        raise SystemExit(f"error: --batch-size {cfg.batch_size} is not divisible by {info.world} ranks")

    # setup
    data = load_dataset(cfg.dataset)
    toolbox = make_toolbox(cfg, data)
    agent_cfg = agent_config(cfg)
    model, tokenizer = build_policy(cfg, data, toolbox, agent_cfg, info, out)
    ref_model = None
    if cfg.kl_coef > 0:
        ref_model = D.shard(_frozen_copy(model), info, cfg.dtype == "bfloat16")
    model.activation_checkpointing = cfg.activation_checkpointing
    model = D.shard(model, info, cfg.dtype == "bfloat16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    train = load_instances(cfg.dataset, "train")
    valid = load_instances(cfg.dataset, "valid")[:cfg.eval_instances]
    stream = DataStream(train, cfg.seed, info)
    steps = cfg.steps or math.ceil(cfg.epochs * len(train) / cfg.batch_size)
    start = load_checkpoint(model, optimizer, scheduler, stream, info, out) if cfg.resume else 0
    rollout_model = D.refresh_rollout_copy(model, None, info)
    rollout = Rollout(Engine(rollout_model, cfg.max_context), tokenizer, data, toolbox, agent_cfg)
    metrics_file = open(out / "metrics.jsonl", "a") if info.is_main else None
    if start == 0:
        _log(metrics_file, {"step": 0, **evaluate_and_save(rollout, valid, info, out, 0, cfg.eval_chunk)})

    # loop
    bar = tqdm(range(start, steps), desc="GRPO", disable=not info.is_main, initial=start, total=steps)
    for step in bar:
        t0 = time.perf_counter()
        rollout.engine.model = rollout_model = D.refresh_rollout_copy(model, rollout_model, info)
        groups, weights, trajectories, dropped, padded = collect_groups(rollout, stream, cfg, step, info)
        t1 = time.perf_counter()
        stats = update(model, ref_model, optimizer, groups, weights, cfg, info)
        scheduler.step()
        t2 = time.perf_counter()
        record = {"step": step + 1, "lr": scheduler.get_last_lr()[0], **summarize(trajectories, info),
                  **group_stats(trajectories, cfg.group_size, info),
                  **_update_metrics(stats, info), "dropped_groups": D.all_reduce_sum([dropped], info)[0],
                  "padded_groups": D.all_reduce_sum([padded], info)[0], "rollout_s": t1 - t0, "update_s": t2 - t1}
        record["tokens_per_s"] = record["n"] * (record["generated"] + record["observation"]) / max(1e-9, t2 - t0)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            rollout.engine.model = rollout_model = D.refresh_rollout_copy(model, rollout_model, info)
            record.update(evaluate_and_save(rollout, valid, info, out, step + 1, cfg.eval_chunk))
        _log(metrics_file, record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", valid=f"{record['valid']:.2f}", kl=f"{record['kl']:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(model, optimizer, scheduler, stream, step + 1, cfg, info, out)
        if cfg.stop_after and step + 1 - start >= cfg.stop_after:
            D.shutdown(info)
            return

    rollout.engine.model = D.refresh_rollout_copy(model, rollout_model, info)
    final = evaluate_and_save(rollout, valid, info, out, steps, cfg.eval_chunk)
    _log(metrics_file, {"step": steps, "final": True, **final})
    export(model, info, out / "final", tokenizer)
    if info.is_main and cfg.model == "preset":
        (out / "final" / PRESET_MARKER).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if info.is_main:
        final_report(out, data, toolbox, valid, steps)
    D.shutdown(info)


def _frozen_copy(model):
    import copy
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _update_metrics(stats: dict, info: D.DistInfo) -> dict:
    kl, clip, tokens, nll = D.all_reduce_sum([stats["kl_sum"], stats["clip_sum"], stats["tokens"],
                                              stats["neg_logp_sum"]], info)
    skipped = D.all_reduce_sum([stats.get("skipped_update", 0.0), stats.get("nonfinite_skipped", 0.0)], info)
    return {"skipped_update": skipped[0] > 0, "nonfinite_skipped": skipped[1],
            "loss": D.all_reduce_sum([stats["loss"]], info)[0], "kl": kl / max(1, tokens),
            "clip_frac": clip / max(1, tokens), "entropy_mc": nll / max(1, tokens), "grad_norm": stats["grad_norm"],
            **{k: v for k, v in stats.items() if k.startswith("adv_")}}


def _log(file, record: dict) -> None:
    if file is not None:
        file.write(json.dumps(record) + "\n")
        file.flush()


if __name__ == "__main__":
    main()
