"""Stage 1 of AgenticRec: list-wise GRPO for a tool-calling recommender agent.

    python train_grpo.py                                      # the CPU preset (agenticrec/preset.py)
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

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agenticrec import distributed as D
from agenticrec import preset
from agenticrec.agent import Rollout
from agenticrec.checkpoint import export, load_checkpoint, save_checkpoint, train_config
from agenticrec.cli import option, parse_flags
from agenticrec.data import interleaved_instances, load_dataset
from agenticrec.profiles import build_profiles
from agenticrec.reward import ranking_metrics
from agenticrec.trainer import (DataStream, MetricsLog, Objective, Sampling, TrainingConfig, agent_config,
                                collect_groups, eval_sizes, evaluate_and_save, group_stats, load_policy,
                                make_rollout, make_toolbox, reference_policy, release_rollout, size_breakdown,
                                size_lines, start_run, summarize, sync_rollout, tool_path_stats, train_sizes, update,
                                update_metrics, valid_instances, warmup_schedule)

log = logging.getLogger("train_grpo")


@dataclass
class Config(TrainingConfig):
    """train_grpo.py's settings; the ones both stages share are agenticrec.trainer.TrainingConfig's."""

    model: str = option("preset", 'a Hugging Face Qwen3 folder, or "preset" (tiny Qwen3 + BPE + scripted warm start)')
    dataset: str = option("games", "a dataset under data/")
    out: str = option("runs/grpo", "output folder: metrics.jsonl, checkpoints/, final/")
    epochs: float = option(3.0, "passes over the train instances (ignored when --steps > 0)")
    batch_size: int = option(64, "groups (instances) per step, over all ranks")
    group_size: int = option(8, "rollouts per instance (G)")
    profiles: str = option(
        "", "the LLM profile cache (built and extended as needed); default out/profiles.jsonl.gz; none: statistics")
    activation_checkpointing: bool = option(False, "recompute each decoder layer in the backward pass (long contexts)")
    eval_every: int = option(0, "steps between valid evaluations (0 = only before and after training)")


def parse_args(argv=None) -> Config:
    """Defaults, then the preset's settings under --model preset (agenticrec.preset.GRPO), then the given flags."""
    given = parse_flags(Config, __doc__.splitlines()[0], argv)
    overrides = preset.GRPO if given.get("model", Config.model) == "preset" else {}
    cfg = Config(**{**overrides, **given})
    train_sizes(cfg), eval_sizes(cfg)  # a clear error before the run starts
    return cfg


# ------------------------------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the loop reads and updates."""

    cfg: Config
    info: D.DistInfo
    out: Path
    layer: dict | None  # the preset layer (agenticrec.preset.layer), None for the paper recipe
    model: torch.nn.Module  # sharded under FSDP; rollouts use an unsharded copy (rollout.engine.model)
    ref_model: torch.nn.Module | None
    tokenizer: object
    rollout: Rollout
    optimizer: torch.optim.Optimizer
    scheduler: object
    stream: DataStream
    valid: list
    steps: int
    start: int
    metrics: MetricsLog
    profiles: str | None  # the LLM profile cache get_user_profile serves, None for the statistics fallback


def setup(cfg: Config, info: D.DistInfo, out: Path) -> Run:
    data = load_dataset(cfg.dataset)
    layer = preset.layer(out / "preset" / "warm_start") if cfg.model == "preset" else None
    if layer is not None:
        log.info("CPU preset: %s; settings %s", preset.describe(layer), preset.GRPO)
    toolbox = make_toolbox(data, cfg.tools, preset.toolbox_class(layer), info, preset.sasrec_train(layer))
    prompt_data = preset.prompt_data(data, layer)
    sizes = train_sizes(cfg)
    if layer is not None:
        model, tokenizer = preset.preset_policy(data, toolbox, agent_config(cfg), cfg.seed, info, out, sizes)
    else:
        model, tokenizer = load_policy(cfg.model, info)
    train = interleaved_instances(data, "train", sizes)
    valid = valid_instances(data, cfg)
    dtype = getattr(torch, cfg.dtype)
    ref_model = reference_policy(model, dtype, info) if cfg.kl_coef > 0 else None
    model.activation_checkpointing = cfg.activation_checkpointing
    model = D.shard(model, info, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    rollout = make_rollout(model, cfg, info, tokenizer, prompt_data, toolbox)
    profiles = attach_profiles(cfg, toolbox, rollout.engine.model, tokenizer, train + valid, layer, info, out)
    stream = DataStream(train, cfg.seed, info)  # the resumed weights reach the copy at the loop's first sync
    start = load_checkpoint(model, optimizer, scheduler, stream, info, out) if cfg.resume else 0
    steps = cfg.steps or math.ceil(cfg.epochs * len(train) / cfg.batch_size)
    return Run(cfg, info, out, layer, model, ref_model, tokenizer, rollout, optimizer, scheduler, stream, valid,
               steps, start, MetricsLog(out / "metrics.jsonl", info), profiles)


def attach_profiles(cfg: Config, toolbox, model, tokenizer, instances, layer, info: D.DistInfo, out: Path):
    """get_user_profile serves the backbone LLM's offline profiles of ``instances`` (built once, cached, generated
    by ``model``: the unsharded rollout copy); the preset and ``--profiles none`` use the statistics fallback.
    Returns the cache's path, or None."""
    if layer is not None or cfg.profiles == "none":
        log.info("get_user_profile: statistics of the history (%s)",
                 "the preset has no LLM to write profiles" if layer is not None else "--profiles none")
        return None
    path = Path(cfg.profiles or out / "profiles.jsonl.gz")
    toolbox.profiles = build_profiles(model, tokenizer, toolbox.data, instances, path, info)
    return str(path)


# ------------------------------------------------------------------------------------------------------------------
# Main: config -> setup -> loop (rollout -> reward -> advantage -> update -> log -> checkpoint)
# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    cfg = parse_args(argv)
    info, out = start_run(cfg.threads, cfg.out, cfg.dist_timeout)
    if cfg.batch_size % info.world:
        raise SystemExit(f"error: --batch-size {cfg.batch_size} is not divisible by {info.world} ranks")
    run = setup(cfg, info, out)
    sampling, objective = Sampling.of(cfg, info), Objective.of(cfg)
    if run.start == 0:
        run.metrics.write({"step": 0, **evaluate_and_save(run.rollout, run.valid, info, out, 0, cfg.eval_chunk)})

    bar = tqdm(range(run.start, run.steps), desc="GRPO", disable=not info.is_main, initial=run.start,
               total=run.steps)
    for step in bar:
        t0 = time.perf_counter()
        sync_rollout(run.rollout, run.model, run.info)
        batch = collect_groups(run.rollout, run.stream, sampling, step, info)  # rollouts and their rewards
        release_rollout(run.rollout, run.model)  # the copy's memory goes to the update
        t1 = time.perf_counter()
        stats = update(run.model, run.ref_model, run.optimizer, batch, objective, info)  # advantages, loss, step
        run.scheduler.step()
        record = step_record(run, step, batch, stats, rollout_s=t1 - t0, update_s=time.perf_counter() - t1)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            sync_rollout(run.rollout, run.model, run.info)
            record.update(evaluate_and_save(run.rollout, run.valid, info, out, step + 1, cfg.eval_chunk))
        run.metrics.write(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", valid=f"{record['valid']:.2f}", kl=f"{record['kl']:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == run.steps:
            save_checkpoint(run.model, run.optimizer, run.scheduler, run.stream, step + 1, dataclasses.asdict(cfg),
                            info, out)
        if cfg.stop_after and step + 1 - run.start >= cfg.stop_after:
            D.shutdown(info)
            return
    finish(run)


def step_record(run: Run, step: int, batch, stats: dict, rollout_s: float, update_s: float) -> dict:
    """One line of metrics.jsonl: rollout statistics, the update's, and timings (reduced over ranks)."""
    info = run.info
    record = {"step": step + 1, "lr": run.scheduler.get_last_lr()[0], **summarize(batch.trajectories, info),
              **group_stats(batch.trajectories, run.cfg.group_size, info), **update_metrics(stats, info),
              "dropped_groups": D.all_reduce_sum([batch.dropped], info)[0],
              "padded_groups": D.all_reduce_sum([batch.padded], info)[0], "rollout_s": rollout_s, "update_s": update_s,
              "tool_paths": tool_path_stats(batch.trajectories, run.cfg.group_size, info)}
    record["tokens_per_s"] = record["n"] * (record["generated"] + record["observation"]) / max(1e-9,
                                                                                                rollout_s + update_s)
    return record


def finish(run: Run) -> None:
    """The final evaluation, the exported policy (with its train_config.json) and the before / after report."""
    sync_rollout(run.rollout, run.model, run.info)
    final = evaluate_and_save(run.rollout, run.valid, run.info, run.out, run.steps, run.cfg.eval_chunk)
    run.metrics.write({"step": run.steps, "final": True, **final})
    saved = train_config("train_grpo.py", run.cfg, run.layer, profiles=run.profiles)
    export(run.model, run.info, run.out / "final", run.tokenizer, saved)
    if run.info.is_main:
        final_report(run)
    D.shutdown(run.info)


def final_report(run: Run) -> dict:
    """Before vs after GRPO on the same valid instances (paired bootstrap CI of the NDCG@10 gain), under the preset
    each ranking tool's own order copied verbatim, the per-tool call rates and, when the run evaluates several
    candidate-set sizes (``--eval-candidates``), before vs after on each; printed and written to out/report.json."""
    from agenticrec.stats import paired_bootstrap
    out, steps, toolbox = run.out, run.steps, run.rollout.toolbox
    before, after = (json.loads((out / "evals" / f"step_{s:06d}.json").read_text()) for s in (0, steps))
    rows = {"start (step 0)": before, f"GRPO (step {steps})": after}
    if run.layer is not None:
        rows.update({name: {f"eval_{k}": v for k, v in metrics.items()} for name, metrics in
                     preset.copied_orders(toolbox.data, toolbox, run.valid).items()})
    gain = paired_bootstrap(*([ranking_metrics(r or None)["N@10"] for r in e["ranks"]] for e in (before, after)))
    lines = [f"valid instances: {len(run.valid)}", f"{'policy':<34}{'H@1':>7}{'H@10':>7}{'N@5':>7}{'N@10':>7}"]
    lines += [f"{name:<34}" + "".join(f"{r[f'eval_{k}']:>7.3f}" for k in ("H@1", "H@10", "N@5", "N@10"))
              for name, r in rows.items()]
    lines.append(f"NDCG@10 gain of GRPO: {gain['diff']:+.4f}, paired bootstrap 95% CI [{gain['lo']:+.4f}, "
                 f"{gain['hi']:+.4f}]")
    lines.append("tool calls per rollout (answered after it): " + "; ".join(
        f"{n} {before[f'eval_calls_{n}']:.2f} ({before[f'eval_last_{n}']:.2f}) -> {after[f'eval_calls_{n}']:.2f} "
        f"({after[f'eval_last_{n}']:.2f})" for n in (t.name for t in toolbox.tools)))
    sizes = size_breakdown(run.valid, before["ranks"], after["ranks"])
    lines += size_lines(sizes, "start", "GRPO")
    print("\n".join(lines), flush=True)
    report = {"gain_ndcg10": gain, "rows": {k: {m: v for m, v in r.items() if m != "ranks"} for k, r in rows.items()},
              "by_size": sizes}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
