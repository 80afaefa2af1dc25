"""Stage 2 of AgenticRec: Progressive Preference Refinement (PPR) on A / B questions mined from ranking violations.

    python train_ppr.py                                   # the CPU preset, after `python train_grpo.py`
    torchrun --nproc_per_node 4 train_ppr.py --model runs/grpo/final --dtype bfloat16 --objective grpo

How this differs from the paper's description (docs/ppr.md has the math):
1. Mining, tasks and the ``grpo`` objective follow the paper: the stage-1 policy on TRAIN instances (greedy by
   default), one uniform hard negative per violation, MORE and LESS tasks per pair with c+ at A for half of the
   pairs, reward 1 / 0 (invalid -1 as in stage 1), and the stage-1 update (agenticrec.trainer.update) unchanged.
2. Dynamic sampling drops groups with equal rewards by default: with 0 / 1 rewards an all-correct or all-wrong group
   has no signal (stage 1 drops only all-negative groups).
3. ``--objective logistic`` trains Proposition 4.2's loss directly: the margin is the log-likelihood of answering
   c+ minus that of c- (MORE), and of c- minus c+ (LESS), in the context the stage-1 policy builds for the task (its
   greedy tool calls and observations, up to where its answer begins).
4. Ablations the paper lacks: ``--unidirectional`` (MORE only) and ``--random-negatives``. Options, off by default:
   ``--train-context-tokens`` (logistic: train on each context's tail) and, for either objective, ``--replay-coef``
   (rehearsal: an NLL on the stage-1 policy's own ranking trajectories, which the logistic objective needs in
   place of a KL term, and which keeps the ranking when the A / B questions alone would move it).
5. Pairwise accuracy on valid pairs mined the same way, before and after, two ways: the greedy agent's answer
   (with tools) and the likelihood margin; both again on random-negative valid pairs (a control for the selection
   effect of mining); and the ranking task's H@1 and NDCG@10 on valid instances, each with a paired bootstrap CI
   (out/report.json).
6. The agent settings (tools, budgets, context), the train candidate-set sizes and the preset layer, if any, come
   from the stage-1 checkpoint's train_config.json unless given; every value taken from it is logged.
7. Under the CPU preset (``--choice-warm-start``, agenticrec.preset.PPR) the stage-1 policy is first fine-tuned to
   answer A / B questions (agenticrec.preset.choice_policy), and that policy is the one PPR mines with, starts from
   and keeps its KL to: the preset's stage-1 policy has never seen an A / B question.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from agenticrec import distributed as D
from agenticrec import preset
from agenticrec.agent import Rollout
from agenticrec.checkpoint import (CHECKPOINT_SETTINGS, export, load_checkpoint, read_train_config,
                                   save_checkpoint, train_config)
from agenticrec.cli import option, parse_flags
from agenticrec.data import Dataset, interleaved_instances, load_dataset, load_instances
from agenticrec.policy import sft_loss
from agenticrec.ppr import (answer_text, bidirectional_loss, bidirectional_tasks, choice_margins, mine_pairs,
                            random_pairs, read_pairs, write_pairs)
from agenticrec.profiles import load_profiles
from agenticrec.reward import hit_at, ndcg_at
from agenticrec.stats import paired_bootstrap
from agenticrec.trainer import (DataStream, MetricsLog, Objective, Sampling, TrainingConfig, agent_config,
                                collect_groups, eval_sizes, evaluate, greedy_rollout, greedy_run, group_stats,
                                load_policy, make_rollout, make_toolbox, reference_policy, rehearsal_data,
                                release_rollout, rows_per_call, size_breakdown, size_lines, start_run, summarize,
                                sync_rollout, train_sizes, update, update_metrics, valid_instances, warmup_schedule)
from agenticrec.warmstart import ChoiceStartConfig

log = logging.getLogger("train_ppr")


@dataclass
class Config(TrainingConfig):
    """train_ppr.py's settings; the ones both stages share are agenticrec.trainer.TrainingConfig's (the agent
    settings default to the stage-1 checkpoint's, parse_args)."""

    model: str = option("runs/grpo/final", "the stage-1 checkpoint: a Hugging Face folder with its tokenizer")
    dataset: str = option("games", "a dataset under data/")
    out: str = option("runs/ppr", "output folder: pairs, metrics.jsonl, checkpoints/, final/")
    objective: str = option("grpo", "grpo (the paper) | logistic (Proposition 4.2's loss on answer likelihoods)")
    unidirectional: bool = option(False, "MORE tasks only (ablation)")
    random_negatives: bool = option(False, "c- uniform over the other candidates instead of mined (ablation)")
    mine_instances: int = option(0, "train instances to mine (0 = all)")
    mine_sampled: bool = option(False, "mine with rollouts sampled at --temperature (default: greedy)")
    pairs_from: str = option("", "reuse the pairs an earlier run mined (its out folder): ablations on the same pairs")
    valid_mine_instances: int = option(1000, "valid instances mined for the pairwise-accuracy evaluation")
    train_context_tokens: int = option(0, "logistic: train on the last N tokens of each context (0 = all)")
    replay_coef: float = option(0.0, "weight of the rehearsal NLL on stage-1 ranking trajectories (0 = off)")
    replay_instances: int = option(512, "train instances whose stage-1 greedy trajectories are the rehearsal data")
    replay_batch: int = option(4, "rehearsal trajectories per step and rank")
    epochs: float = option(1.0, "passes over the training tasks (ignored when --steps > 0)")
    batch_size: int = option(64, "tasks per step, over all ranks")
    group_size: int = option(8, "rollouts per task (G), grpo objective")
    profiles: str = option("", "the LLM profile cache get_user_profile serves; default: the stage-1 run's")
    drop_all_equal: bool = option(True, "drop groups with equal rewards (no signal with 0 / 1 rewards)")
    choice_warm_start: int = option(0, "CPU preset: first fine-tune the stage-1 policy on A / B answers, at most N "
                                       "steps (0 = off; agenticrec.preset.choice_policy)")


# What PPR takes from the stage-1 checkpoint: its dataset and agent settings, and the candidate-set sizes it trained
# on (mining and rehearsal on 20 candidates alone would let a policy trained on 20 and 50 forget the 50); the ranking
# is evaluated on the sizes stage 1 was evaluated on, whatever PPR trains on, so that such a loss shows in the report.
STAGE1_SETTINGS = (*CHECKPOINT_SETTINGS, "train_candidates")


def parse_args(argv=None) -> tuple[Config, dict]:
    """(Config, the settings taken from the stage-1 checkpoint). Layers, last wins: the defaults; the stage-1
    checkpoint's dataset, agent settings and train candidate-set sizes (its train_config.json, STAGE1_SETTINGS); on
    a preset checkpoint the PPR preset (agenticrec.preset.PPR); the given flags."""
    given = parse_flags(Config, __doc__.splitlines()[0], argv)
    saved = read_train_config(given.get("model", Config.model)) or {"config": {}, "preset": None}
    taken = {k: saved["config"][k] for k in STAGE1_SETTINGS if k in saved["config"]}
    stage1_sizes = saved["config"].get("eval_candidates") or saved["config"].get("train_candidates")
    taken.update({"eval_candidates": stage1_sizes} if stage1_sizes else {})
    objective = given.get("objective", Config.objective)
    if objective not in ("grpo", "logistic"):
        raise SystemExit(f"error: --objective must be grpo or logistic, got {objective!r}")
    taken.update(preset.PPR[objective] if saved["preset"] else {})
    cfg = Config(**{**taken, **given})
    if cfg.choice_warm_start and not saved["preset"]:
        raise SystemExit("error: --choice-warm-start needs a CPU preset checkpoint (its tools write the option lines)")
    train_sizes(cfg), eval_sizes(cfg)
    return cfg, {k: v for k, v in taken.items() if k not in given}


# ------------------------------------------------------------------------------------------------------------------
# Mining and evaluation
# ------------------------------------------------------------------------------------------------------------------


def mine(rollout: Rollout, instances, cfg: Config, info: D.DistInfo, path: Path, split: str):
    """Pairs mined from ``instances``: each rank rolls out its share, the (instance, ranking) outcomes are gathered
    in instance order, and every rank draws the same negatives from them. Written to ``path``."""
    if cfg.random_negatives:
        pairs, stats = random_pairs(instances, cfg.seed), {"random_negatives": True, "violations": len(instances)}
    else:
        policy = rollout if cfg.mine_sampled else greedy_rollout(rollout)
        outcomes = mine_outcomes(policy, instances, cfg, info, split)
        pairs, stats = mine_pairs([SimpleNamespace(instance=instances[i], ranking=r) for i, r in outcomes], cfg.seed)
    if info.is_main:
        write_pairs(path, pairs, stats)
        log.info("%s pairs: %s", split, {k: v for k, v in stats.items() if not isinstance(v, dict)})
    return pairs, stats


def mine_outcomes(policy: Rollout, instances, cfg: Config, info: D.DistInfo, split: str) -> list[tuple]:
    """(instance index, ranking) of every instance, in order. Rank r rolls out instances r, r + world, ...; the
    outcomes are gathered after every round of engine calls, so no rank runs more than one call ahead of another
    between collectives (every rank runs the same number of rounds, the last ones possibly empty)."""
    outcomes = []
    for start, mine in tqdm(D.rounds(len(instances), rows_per_call(policy, cfg.eval_chunk), info),
                            desc=f"mining {split}", disable=not info.is_main):
        seed = cfg.seed + 1_000_003 * info.rank + start
        done = [(i, t.ranking) for i, t in zip(mine, policy.run([instances[i] for i in mine], seed=seed))] if mine \
            else []
        outcomes += [o for part in D.all_gather_objects(done, info) for o in part]
    return sorted(outcomes)


def _mined(path: Path):
    """(pairs, statistics) written by ``mine``; a clear error when they are missing."""
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing (pairs are mined once, at the start of a run, into its out/)")
    return read_pairs(path), json.loads(path.with_suffix(".stats.json").read_text())


def answer_contexts(rollout: Rollout, tasks, cfg: Config, info: D.DistInfo, name: str) -> tuple[list[list[int]], dict]:
    """(contexts, their ``context_summary``): the policy's greedy rollout of each task, cut where its last turn
    begins — the prompt plus the policy's own tool calls and observations, where its answer would begin. Built once,
    with the STAGE-1 policy: contexts rebuilt by the model being trained drift (on the preset its early updates
    made it stop calling tools, and the evidence vanished from the context it was scored in). The main process logs
    the summary under ``name`` (every rank builds the same contexts)."""
    trajectories = greedy_run(rollout, tasks, cfg.eval_chunk, desc=f"stage-1 contexts, {name}")
    contexts = [t.ids[:last_turn_start(t.mask)] for t in trajectories]
    summary = context_summary(trajectories, contexts)
    if info.is_main:
        log.info("stage-1 contexts, %s: %s", name, summary)
        if mostly_bare(summary):
            log.warning("stage-1 contexts, %s: only %.0f%% hold a tool observation, so most answers are scored right "
                        "after the prompt, on no evidence but the two titles (valid stage-1 A / B answers: %.0f%%)",
                        name, 100 * summary["with_observation"], 100 * summary["answered"])
    return contexts, summary


def context_summary(trajectories, contexts) -> dict:
    """What the stage-1 A / B rollouts gave the contexts: the share of valid answers, of contexts holding at least
    one tool observation, and the mean number of tool calls and of context tokens after the prompt."""
    n = max(1, len(trajectories))
    after_prompt = [len(c) - t.prompt_len for t, c in zip(trajectories, contexts)]
    return {"tasks": len(trajectories),
            "answered": sum(t.invalid_reason is None for t in trajectories) / n,
            "with_observation": sum(a > 0 for a in after_prompt) / n,
            "tool_calls": sum(len(t.tool_calls) for t in trajectories) / n,
            "tokens_after_prompt": sum(after_prompt) / n}


def mostly_bare(summary: dict | None) -> bool:
    """True when fewer than half of the contexts hold a tool observation: the answers are scored after the prompt."""
    return bool(summary) and summary["tasks"] > 0 and summary["with_observation"] < 0.5


def last_turn_start(mask: list[int]) -> int:
    """The index where the trailing run of sampled tokens (the last turn) begins."""
    end = len(mask)
    while end > 0 and mask[end - 1] == 1:
        end -= 1
    return end


def pairwise_accuracy(model, rollout: Rollout, tasks, contexts, cfg: Config) -> dict:
    """Per-task correctness on the valid tasks: the current policy's greedy answer (invalid = wrong), and the sign
    of the likelihood margin in the stage-1 context. Evaluated in every process on all tasks (identical numbers)."""
    agent = [float(t.reward == 1.0) for t in greedy_run(rollout, tasks, cfg.eval_chunk)]
    right = (task_margins(model, rollout.tokenizer, tasks, contexts, cfg, grad=False) > 0).float()
    return {"agent": agent, "likelihood": right.tolist(), "agent_accuracy": float(np.mean(agent)),
            "likelihood_accuracy": float(right.mean())}


def task_margins(model, tokenizer, tasks, contexts, cfg: Config, grad: bool) -> torch.Tensor:
    """[T] log pi(correct answer | context) - log pi(other answer | context) for each task."""
    answers = {c: tokenizer.encode(answer_text(c), add_special_tokens=False) for c in "AB"}
    with torch.set_grad_enabled(grad):
        return choice_margins(model, prompts=contexts, answer_ids=answers, correct=[t.answer for t in tasks],
                              temperature=cfg.temperature)


# ------------------------------------------------------------------------------------------------------------------
# The logistic update (the grpo objective is agenticrec.trainer.update, unchanged)
# ------------------------------------------------------------------------------------------------------------------


def logistic_update(model, optimizer, tokenizer, tasks, contexts, replay, cfg: Config,
                    info: D.DistInfo) -> dict:
    """One step of Proposition 4.2's loss on this rank's tasks, each scored in its stage-1 context
    (``answer_contexts``), plus ``replay_coef`` x the rehearsal NLL on ``replay`` (stage-1 ranking trajectories,
    ``replay_trajectories``). The Prop 4.2 mean is over the GLOBAL number of pairs, so the gradient does not depend
    on the number of ranks; the rehearsal term is a mean over this rank's equal-sized batch, averaged over ranks by
    FSDP, i.e. a global mean too. Tasks come in (MORE, LESS) pairs unless unidirectional."""
    margins = task_margins(model, tokenizer, tasks, contexts, cfg, grad=True)
    more, less = (margins, None) if cfg.unidirectional else (margins[0::2], margins[1::2])
    loss, metrics = bidirectional_loss(margin_more=more, margin_less=less)
    global_pairs = D.all_reduce_sum([float(len(more))], info)[0]
    optimizer.zero_grad(set_to_none=True)
    total = loss * len(more) / global_pairs * info.world  # FSDP averages gradients over ranks
    replay_nll = sft_loss(model, replay, info.device) if replay else None
    if replay_nll is not None:
        total = total + cfg.replay_coef * replay_nll
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if torch.isfinite(grad_norm):
        optimizer.step()
    return {"loss": metrics["loss"], "margin_accuracy": metrics["accuracy"], "grad_norm": float(grad_norm),
            "nonfinite_skipped": float(not torch.isfinite(grad_norm)),
            **({"replay_nll": float(replay_nll.detach())} if replay_nll is not None else {})}


def replay_trajectories(rollout: Rollout, instances, cfg: Config) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of the stage-1 policy's valid greedy ranking trajectories on ``instances``: the rehearsal data.
    Training only on A / B answers at the preset's learning rate otherwise overwrites the ranking format (measured:
    valid ranking answers 1.00 -> 0.00); an NLL on the policy's own ranking turns keeps it (continual-learning
    rehearsal). The ``grpo`` objective's KL term is taken on A / B rollouts only, so it does not hold the ranking
    either (docs/ppr.md)."""
    return rehearsal_data(rollout, instances, cfg.eval_chunk, desc="rehearsal data")


def replay_batch(replay: list, step: int, cfg: Config, info: D.DistInfo) -> list:
    """This rank's ``replay_batch`` rehearsal trajectories of ``step``, drawn from (seed, step, rank): a resumed run
    draws the same ones."""
    if not replay or cfg.replay_coef <= 0:
        return []
    rng = random.Random(cfg.seed * 1_000_003 + step * 1_009 + info.rank)
    return rng.sample(replay, min(len(replay), cfg.replay_batch))


# ------------------------------------------------------------------------------------------------------------------
# Setup: the stage-1 policy, then the pairs, tasks and contexts
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the loop reads and updates."""

    cfg: Config
    info: D.DistInfo
    out: Path
    data: Dataset
    layer: dict | None  # the stage-1 checkpoint's preset layer (agenticrec.preset.layer), None for the paper recipe
    profiles: str | None  # the LLM profile cache get_user_profile serves, None for the statistics fallback
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    tokenizer: object
    rollout: Rollout
    optimizer: torch.optim.Optimizer
    scheduler: object


def setup(cfg: Config, info: D.DistInfo, out: Path) -> Run:
    saved = read_train_config(cfg.model) or {"preset": None}
    layer = saved["preset"]
    if layer is not None:
        log.info("CPU preset (from %s): %s", cfg.model, preset.describe(layer))
    data = load_dataset(cfg.dataset)
    toolbox = make_toolbox(data, cfg.tools, preset.toolbox_class(layer), info, preset.sasrec_train(layer))
    profiles = cfg.profiles or saved.get("profiles")
    if profiles and profiles != "none":
        toolbox.profiles = load_profiles(profiles)
    log.info("get_user_profile: %s", f"{len(toolbox.profiles)} LLM profiles from {profiles}" if toolbox.profiles
             else "statistics of the history (no LLM profiles)")
    model, tokenizer = load_policy(cfg.model, info)
    if cfg.choice_warm_start:  # the preset: a stage-1 policy that answers A / B questions, PPR's start and reference
        model, folder = preset.choice_policy(model, tokenizer, data, toolbox, agent_config(cfg), layer, info, out,
                                             cfg.model, train_sizes(cfg),
                                             ChoiceStartConfig(max_steps=cfg.choice_warm_start, seed=cfg.seed))
        layer = {**layer, "choice_warm_start": str(folder)}
    dtype = getattr(torch, cfg.dtype)
    ref_model = reference_policy(model, dtype, info) if cfg.objective == "grpo" and cfg.kl_coef > 0 else None
    model = D.shard(model, info, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rollout = make_rollout(model, cfg, info, tokenizer, preset.prompt_data(data, layer), toolbox)
    return Run(cfg, info, out, data, layer, profiles if toolbox.profiles else None, model, ref_model, tokenizer,
               rollout, optimizer, warmup_schedule(optimizer, cfg.warmup_steps))


def mined_pairs(run: Run, train_instances, valid) -> dict[str, tuple]:
    """{"train": (pairs, stats), "valid": (pairs, stats)}: mined with the stage-1 policy, or read back from this
    run's out/ (resume: not the half-trained policy) or from --pairs-from (ablations on the same pairs)."""
    cfg, info, out = run.cfg, run.info, run.out
    if cfg.resume or cfg.pairs_from:
        source = out if cfg.resume else Path(cfg.pairs_from)
        mined = {split: _mined(source / f"pairs_{split}.jsonl") for split in ("train", "valid")}
        if info.is_main and source != out:  # this run's out/ holds the pairs it trained on (and resumes with)
            for split, (pairs, stats) in mined.items():
                write_pairs(out / f"pairs_{split}.jsonl", pairs, stats)
        return mined
    train = mine(run.rollout, train_instances, cfg, info, out / "pairs_train.jsonl", "train")
    valid = mine(run.rollout, valid[:cfg.valid_mine_instances], dataclasses.replace(cfg, random_negatives=False),
                 info, out / "pairs_valid.jsonl", "valid")
    return {"train": train, "valid": valid}


@dataclass
class Tasks:
    """What the loop trains on and what the evaluation measures."""

    units: list  # the stream's items: a task (grpo), or a (MORE, LESS) pair of (task, context) (logistic)
    replay: list  # rehearsal trajectories (--replay-coef)
    probes: dict  # {"mined": (valid tasks, contexts), "random": (control tasks, contexts)}
    mined: dict  # mined_pairs' result
    valid_contexts: dict  # context_summary of the mined valid tasks' stage-1 contexts


def build_tasks(run: Run, train_instances, valid) -> Tasks:
    """Bidirectional tasks from the mined pairs; for the logistic objective the stage-1 contexts they are scored
    in (every rank builds every context: simple and deterministic) and the rehearsal data."""
    cfg, rollout = run.cfg, run.rollout
    mined = mined_pairs(run, train_instances, valid)
    tasks = bidirectional_tasks(mined["train"][0], cfg.seed, cfg.unidirectional, "train")
    valid_tasks = bidirectional_tasks(mined["valid"][0], cfg.seed, False, "valid")
    if not tasks or not valid_tasks:
        raise SystemExit("error: mining found no violations to learn from or to measure on")
    units = tasks
    if cfg.objective == "logistic":  # MORE / LESS stay together; train on the tails (evaluation: whole contexts)
        contexts = [c[-cfg.train_context_tokens:] if cfg.train_context_tokens else c
                    for c in answer_contexts(rollout, tasks, cfg, run.info, "train")[0]]
        units = [list(zip(tasks, contexts))[i:i + _per_unit(cfg)] for i in range(0, len(tasks), _per_unit(cfg))]
    replay = replay_trajectories(rollout, train_instances[:cfg.replay_instances], cfg) if cfg.replay_coef > 0 else []
    # built before a resumed checkpoint is loaded: the stage-1 policy's contexts
    valid_contexts, summary = answer_contexts(rollout, valid_tasks, cfg, run.info, "valid")
    # the control: valid pairs with a RANDOM negative. Mined pairs are, by construction, those where the stage-1
    # evidence is wrong; a model that learns to distrust that evidence wins on them and loses here.
    control_tasks = bidirectional_tasks(random_pairs(valid[:cfg.valid_mine_instances], cfg.seed + 1), cfg.seed)
    probes = {"mined": (valid_tasks, valid_contexts),
              "random": (control_tasks, answer_contexts(rollout, control_tasks, cfg, run.info, "control")[0])}
    return Tasks(units, replay, probes, mined, summary)


# ------------------------------------------------------------------------------------------------------------------
# Main: config -> setup -> mine -> loop (tasks -> update -> log -> checkpoint) -> before / after report
# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    cfg, taken = parse_args(argv)
    info, out = start_run(cfg.threads, cfg.out, cfg.dist_timeout)
    if not (Path(cfg.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {cfg.model} is not a model folder; run train_grpo.py first (its out/final)")
    if cfg.batch_size % info.world or (cfg.objective == "logistic" and not cfg.unidirectional and cfg.batch_size % 2):
        raise SystemExit(f"error: --batch-size {cfg.batch_size} must split over {info.world} ranks (and be even)")
    if taken:
        log.info("settings from %s/train_config.json: %s", cfg.model, taken)
    run = setup(cfg, info, out)
    train_instances = interleaved_instances(run.data, "train", train_sizes(cfg))
    train_instances = train_instances[:cfg.mine_instances] if cfg.mine_instances else train_instances
    valid = load_instances(cfg.dataset, "valid")  # the A / B evaluation pairs are mined from these
    tasks = build_tasks(run, train_instances, valid)
    ranking_valid = valid_instances(run.data, cfg)
    stream = DataStream(tasks.units, cfg.seed, info)
    steps = cfg.steps or math.ceil(cfg.epochs * len(tasks.units) * _per_unit(cfg) / cfg.batch_size)
    start = load_checkpoint(run.model, run.optimizer, run.scheduler, stream, info, out) if cfg.resume else 0
    sync_rollout(run.rollout, run.model, run.info)
    metrics = MetricsLog(out / "metrics.jsonl", info)
    before = evaluation(run, tasks.probes, ranking_valid, start)

    bar = tqdm(range(start, steps), desc=f"PPR ({cfg.objective})", disable=not info.is_main, initial=start,
               total=steps)
    for step in bar:
        t0 = time.perf_counter()
        record = {"step": step + 1, **(grpo_step(run, stream, tasks.replay, step) if cfg.objective == "grpo" else
                                       logistic_step(run, stream, tasks.replay, step))}
        run.scheduler.step()
        record.update({"lr": run.scheduler.get_last_lr()[0], "step_s": time.perf_counter() - t0})
        metrics.write(record)
        bar.set_postfix(loss=f"{record.get('loss', 0.0):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(run.model, run.optimizer, run.scheduler, stream, step + 1, dataclasses.asdict(cfg), info,
                            out)
        if cfg.stop_after and step + 1 - start >= cfg.stop_after:
            D.shutdown(info)
            return

    sync_rollout(run.rollout, run.model, run.info)
    after = evaluation(run, tasks.probes, ranking_valid, steps)
    saved = train_config("train_ppr.py", cfg, run.layer, profiles=run.profiles, stage1=cfg.model)
    export(run.model, info, out / "final", run.tokenizer, saved)
    if info.is_main:
        report(out, before, after, tasks.mined["train"][1], tasks.mined["valid"][1], tasks.valid_contexts,
               size_breakdown(ranking_valid, before["ranks"], after["ranks"]), cfg.objective)
    D.shutdown(info)


def _per_unit(cfg: Config) -> int:
    """Tasks per stream item: the logistic objective keeps each pair's MORE and LESS tasks together."""
    return 1 if cfg.unidirectional or cfg.objective == "grpo" else 2


def grpo_step(run: Run, stream: DataStream, replay: list, step: int) -> dict:
    """The paper's objective: stage 1's dynamic sampling and update on the A / B tasks, with rehearsal when
    ``--replay-coef`` > 0: ``replay_coef`` x the NLL of this step's ``replay_batch``, added to each optimiser step (none
    is taken when every group is dropped)."""
    cfg, info = run.cfg, run.info
    sync_rollout(run.rollout, run.model, info)  # it samples (the logistic objective scores fixed contexts)
    sampling, objective = Sampling.of(cfg, info), Objective.of(cfg)
    batch = collect_groups(run.rollout, stream, sampling, step, info)
    release_rollout(run.rollout, run.model)  # the copy's memory goes to the update
    rehearsed, replay_nll = replay_batch(replay, step, cfg, info), []

    def rehearsal() -> torch.Tensor:
        nll = sft_loss(run.model, rehearsed, info.device)
        replay_nll.append(float(nll.detach()))
        return cfg.replay_coef * nll

    stats = update(run.model, run.ref_model, run.optimizer, batch, objective, info, rehearsal if rehearsed else None)
    return {**summarize(batch.trajectories, info), **group_stats(batch.trajectories, cfg.group_size, info),
            **update_metrics(stats, info), "dropped_groups": D.all_reduce_sum([batch.dropped], info)[0],
            **({"replay_nll": replay_nll[0]} if replay_nll else {})}


def logistic_step(run: Run, stream: DataStream, replay: list, step: int) -> dict:
    """Proposition 4.2's loss on this rank's (MORE, LESS) units in their stage-1 contexts, with rehearsal."""
    cfg, info = run.cfg, run.info
    batch = [tc for unit in stream.take(cfg.batch_size // info.world // _per_unit(cfg)) for tc in unit]
    return logistic_update(run.model, run.optimizer, run.tokenizer, [t for t, _ in batch], [c for _, c in batch],
                           replay_batch(replay, step, cfg, info), cfg, info)


def evaluation(run: Run, probes: dict, valid_instances, step: int) -> dict:
    """Pairwise accuracy on the mined valid tasks (agent answer and likelihood), the likelihood accuracy on the
    random-negative control tasks, and the ranking task's target ranks; saved in out/evals/. A resumed run reads
    the step-0 evaluation back instead of recomputing it on a changed model."""
    model, rollout, cfg, info = run.model, run.rollout, run.cfg, run.info
    path = run.out / "evals" / f"step_{step:06d}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ranking, ranks = evaluate(rollout, valid_instances, info, cfg.eval_chunk)
    control = pairwise_accuracy(model, rollout, *probes["random"], cfg)
    result = {"step": step, **pairwise_accuracy(model, rollout, *probes["mined"], cfg), "ranks": ranks,
              "agent_random": control["agent"], "agent_random_accuracy": control["agent_accuracy"],
              "likelihood_random": control["likelihood"], "likelihood_random_accuracy": control["likelihood_accuracy"],
              "eval_H@1": ranking["eval_H@1"], "eval_N@10": ranking["eval_N@10"], "eval_valid": ranking["eval_valid"]}
    if info.is_main:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result))
    return result


def report(out: Path, before: dict, after: dict, mining: dict, valid_mining: dict,
           contexts: dict | None = None, sizes: dict | None = None, objective: str = "logistic") -> dict:
    """Before vs after with paired bootstrap CIs, what the valid tasks' stage-1 contexts hold (``contexts``, a
    ``context_summary``), the ranking on each candidate-set size (``sizes``, a ``trainer.size_breakdown``) and, when
    the accuracy ``objective`` trains (the agent's answers for grpo, the likelihood margin for logistic) did not
    change significantly, what to check (``no_change_note``); printed and written to out/report.json."""
    hit1 = [[hit_at(r or None, 1) for r in e["ranks"]] for e in (before, after)]  # rank 0: absent or invalid
    ndcg10 = [[ndcg_at(r or None, 10) for r in e["ranks"]] for e in (before, after)]
    series = {"pairwise accuracy, agent answer (greedy, tools)": (before["agent"], after["agent"]),
              "pairwise accuracy, likelihood margin": (before["likelihood"], after["likelihood"]),
              "control, random negatives: agent answer": (before["agent_random"], after["agent_random"]),
              "control, random negatives: likelihood margin": (before["likelihood_random"],
                                                               after["likelihood_random"]),
              "ranking H@1 on valid instances": tuple(hit1), "ranking N@10 on valid instances": tuple(ndcg10)}
    rows = {name: paired_bootstrap(a, b) for name, (a, b) in series.items()}
    means = {name: (float(np.mean(a)), float(np.mean(b))) for name, (a, b) in series.items()}
    lines = [f"train pairs: {mining.get('violations')} (violation rate {mining.get('violation_rate', 1.0):.3f}); "
             f"valid pairs: {valid_mining['violations']} ({len(before['agent'])} tasks)",
             f"{'metric':<50}{'before':>8}{'after':>8}   change [95% CI]"]
    for name, ci in rows.items():
        lines.append(f"{name:<50}{means[name][0]:>8.3f}{means[name][1]:>8.3f}   {ci['diff']:+.4f} "
                     f"[{ci['lo']:+.4f}, {ci['hi']:+.4f}]")
    lines += size_lines(sizes or {}, "before", "after")
    if contexts:
        lines.append(f"stage-1 contexts of the valid tasks: {contexts['with_observation']:.3f} hold a tool "
                     f"observation; the stage-1 A / B answers are valid for {contexts['answered']:.3f}")
    trained = ("pairwise accuracy, agent answer (greedy, tools)" if objective == "grpo" else
               "pairwise accuracy, likelihood margin")
    note = no_change_note(rows[trained], contexts, objective)
    lines += [note] if note else []
    print("\n".join(lines), flush=True)
    result = {"rows": {k: {"before": means[k][0], "after": means[k][1], **rows[k]} for k in rows},
              "mining": mining, "valid_mining": valid_mining, "valid_contexts": contexts, "by_size": sizes or {}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


def no_change_note(change: dict, contexts: dict | None, objective: str = "logistic") -> str | None:
    """What to check when the CI of the accuracy ``objective`` trains (``change``, a paired_bootstrap result) includes
    0. grpo: the groups it learned from. logistic: the contexts, when most of them hold no tool observation; the
    plateau otherwise. None when the change is significant."""
    if not change["lo"] <= 0 <= change["hi"]:
        return None
    if objective == "grpo":
        return ("note: no significant change in the agent's pairwise accuracy. The objective learns only from groups "
                "whose answers differ in reward: check metrics.jsonl's valid and dropped_groups (a policy without "
                "valid A / B answers has every group dropped; docs/ppr.md).")
    if mostly_bare(contexts):
        return ("note: no significant change in pairwise accuracy. Most answers are scored right after the prompt, "
                "with no tool observation before them: on no evidence but the two titles (docs/ppr.md, \"The CPU "
                "preset\").")
    return ("note: no significant change in pairwise accuracy. The bidirectional loss can sit at 2 log 2 for "
            "hundreds of steps before the model reads MORE / LESS (docs/ppr.md); train longer (--epochs) or check "
            "metrics.jsonl's loss.")


if __name__ == "__main__":
    main()
