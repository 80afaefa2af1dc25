"""Stage 2 of AgenticRec: Progressive Preference Refinement (PPR) on A / B questions mined from ranking violations.

    python train_ppr.py                                   # the CPU preset, after `python train_grpo.py`
    torchrun --nproc_per_node 4 train_ppr.py --model runs/grpo/final --dtype bfloat16 --objective grpo

How this differs from the paper's description (docs/ppr.md has the math):
1. Mining, tasks and the ``grpo`` objective follow the paper: the stage-1 policy on TRAIN instances (greedy by
   default), one uniform hard negative per violation, MORE and LESS tasks per pair with c+ at A for half of the
   pairs, reward 1 / 0 (invalid -1 as in stage 1), and the stage-1 trainer (train_grpo.update) unchanged.
2. Dynamic sampling drops groups with equal rewards by default: with 0 / 1 rewards an all-correct or all-wrong group
   has no signal (stage 1 drops only all-negative groups).
3. ``--objective logistic`` trains Proposition 4.2's loss directly: the margin is the log-likelihood of answering
   c+ minus that of c- (MORE), and of c- minus c+ (LESS), in the context the stage-1 policy builds for the task (its
   greedy tool calls and observations, up to where its answer begins).
4. Ablations the paper lacks: ``--unidirectional`` (MORE only) and ``--random-negatives``. Options of the logistic
   objective (the CPU preset's, off by default): ``--train-context-tokens`` (train on each context's tail) and
   ``--replay-coef`` (rehearsal: an NLL on the stage-1 policy's own ranking trajectories, which the logistic
   objective needs in place of a KL term).
5. Pairwise accuracy on valid pairs mined the same way, before and after, two ways: the greedy agent's answer
   (with tools) and the likelihood margin; the likelihood accuracy on random-negative valid pairs (a control for
   the selection effect of mining); and the ranking task's H@1 on valid instances, each with a paired bootstrap
   CI (out/report.json).
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

import train_grpo as G
from agenticrec import distributed as D
from agenticrec.agent import Rollout
from agenticrec.data import load_dataset, load_instances
from agenticrec.engine import Engine
from agenticrec.model import load_pretrained
from agenticrec.ppr import (answer_text, bidirectional_loss, bidirectional_tasks, choice_margins, mine_pairs,
                            random_pairs, read_pairs, write_pairs)
from agenticrec.stats import paired_bootstrap
from agenticrec.tokenizer import load_tokenizer
from agenticrec.warmstart import sft_loss

log = logging.getLogger("train_ppr")


@dataclass
class Config:
    model: str = "runs/grpo/final"  # the stage-1 checkpoint: a Hugging Face folder with its tokenizer
    dataset: str = "games"  # a dataset under data/
    out: str = "runs/ppr"  # output folder: pairs, metrics.jsonl, checkpoints/, final/
    objective: str = "grpo"  # grpo (the paper) | logistic (Proposition 4.2's loss on answer likelihoods)
    unidirectional: bool = False  # MORE tasks only (ablation)
    random_negatives: bool = False  # c- uniform over the other candidates instead of mined (ablation)
    mine_instances: int = 0  # train instances to mine (0 = all)
    mine_sampled: bool = False  # mine with rollouts sampled at --temperature (default: greedy)
    pairs_from: str = ""  # reuse the pairs an earlier run mined (its out folder): ablations on the same pairs
    valid_mine_instances: int = 1000  # valid instances mined for the pairwise-accuracy evaluation
    train_context_tokens: int = 0  # logistic: train on the last N tokens of each context (0 = all); see PRESET
    replay_coef: float = 0.0  # logistic: weight of the rehearsal NLL on stage-1 ranking trajectories (0 = off)
    replay_instances: int = 512  # train instances whose stage-1 greedy trajectories are the rehearsal data
    replay_batch: int = 4  # rehearsal trajectories per step and rank
    epochs: float = 1.0  # passes over the training tasks (ignored when --steps > 0)
    steps: int = 0  # optimiser steps; 0 = derived from --epochs
    batch_size: int = 64  # tasks per step, over all ranks
    group_size: int = 8  # rollouts per task (G), grpo objective
    lr: float = 1e-6  # AdamW learning rate (after warm-up)
    warmup_steps: int = 10  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clipping
    temperature: float = 0.6  # sampling temperature; training log-probs use the same
    max_tool_calls: int = 10  # T_max, as in stage 1
    max_turn_tokens: int = 512  # sampled tokens per turn
    max_context: int = 6144  # tokens per trajectory
    max_title_chars: int = 0  # shorten titles in prompts (0 = no limit)
    tools: str = "all"  # comma-separated tool names, "all", or "none"
    kl_coef: float = 1e-3  # beta; 0 loads no reference model (grpo objective)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    clip_eps: float = 0.2  # PPO clip epsilon
    advantage: str = "mean"  # mean (paper) | std | rloo
    aggregation: str = "token_mean"  # token_mean | sequence_mean
    mu: int = 1  # optimiser updates per rollout batch
    drop_all_negative: bool = True  # dynamic sampling: drop groups whose rewards are all negative
    drop_all_equal: bool = True  # and groups with equal rewards (no signal with 0 / 1 rewards)
    refill_rounds: int = 3  # extra rollout rounds to refill dropped groups
    rollout_groups: int = 0  # groups per engine call; 0 = all at once
    eval_instances: int = 1000  # valid instances for the ranking H@1 before / after
    eval_chunk: int = 250  # instances per engine call in evaluation
    checkpoint_every: int = 50  # steps between checkpoints
    resume: bool = False  # continue from out/checkpoints/latest
    dtype: str = "float32"  # float32 | bfloat16
    threads: int = 2  # torch threads per process
    seed: int = 0  # all randomness derives from (seed, step, rank)
    stop_after: int = 0  # stop after this many steps of this run (tests of resume); 0 = no stop


# The CPU preset, applied when --model holds train_grpo's preset marker (docs/ppr.md, "The CPU preset"): stage 1's
# agent settings, mining 4,000 train instances, and the logistic objective (the tiny stage-1 model was never taught
# to answer A / B questions, so its sampled answers are invalid and GRPO would see no signal; the likelihood margin
# needs none). The loss sits at 2 log 2 for a few hundred steps before the model learns to read MORE / LESS, hence
# lr 3e-3 and 6 epochs; the last 200 tokens of each context (question, tool call, observation) are enough and make
# the escape faster (on whole contexts: none in 790 steps); rehearsal keeps the ranking format (without it: 0 valid).
PRESET = dict(objective="logistic", mine_instances=4000, batch_size=32, lr=3e-3, warmup_steps=5, epochs=6.0,
              train_context_tokens=200, replay_coef=1.0, max_turn_tokens=96, max_context=2048, max_title_chars=24,
              max_tool_calls=4, tools="candidates_analyze,get_similar_users", checkpoint_every=100)


def parse_args(argv=None) -> Config:
    given = G.parse_flags(Config, Path(__file__), __doc__, argv)
    preset = PRESET if (Path(given.get("model", Config.model)) / G.PRESET_MARKER).is_file() else {}
    cfg = Config(**{**preset, **given})
    if cfg.objective not in ("grpo", "logistic"):
        raise SystemExit(f"error: --objective must be grpo or logistic, got {cfg.objective!r}")
    return cfg


# ------------------------------------------------------------------------------------------------------------------
# Mining and evaluation
# ------------------------------------------------------------------------------------------------------------------


def mine(rollout: Rollout, instances, cfg: Config, info: D.DistInfo, path: Path, split: str):
    """Pairs mined from ``instances``: each rank rolls out its share, the (instance, ranking) outcomes are gathered
    in instance order, and every rank draws the same negatives from them. Written to ``path``."""
    if cfg.random_negatives:
        pairs, stats = random_pairs(instances, cfg.seed), {"random_negatives": True, "violations": len(instances)}
    else:
        policy = rollout if cfg.mine_sampled else G.greedy_rollout(rollout)
        mine_idx = list(range(info.rank, len(instances), info.world))
        outcomes = []
        for c in tqdm(range(0, len(mine_idx), cfg.eval_chunk), desc=f"mining {split}", disable=not info.is_main):
            chunk = mine_idx[c:c + cfg.eval_chunk]
            seed = cfg.seed + 1_000_003 * info.rank + c
            outcomes += [(i, t.ranking) for i, t in zip(chunk, policy.run([instances[i] for i in chunk], seed=seed))]
        outcomes = sorted(o for share in D.all_gather_objects(outcomes, info) for o in share)
        pairs, stats = mine_pairs([SimpleNamespace(instance=instances[i], ranking=r) for i, r in outcomes], cfg.seed)
    if info.is_main:
        write_pairs(path, pairs, stats)
        log.info("%s pairs: %s", split, {k: v for k, v in stats.items() if not isinstance(v, dict)})
    return pairs, stats


def _mined(path: Path):
    """(pairs, statistics) written by ``mine``; a clear error when they are missing."""
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing (pairs are mined once, at the start of a run, into its out/)")
    return read_pairs(path), json.loads(path.with_suffix(".stats.json").read_text())


def answer_contexts(rollout: Rollout, tasks, cfg: Config):
    """(contexts, trajectories): the policy's greedy rollout of each task, and its ids up to the start of its last
    turn — the prompt plus the policy's own tool calls and observations, where its answer would begin. Built once,
    with the STAGE-1 policy: contexts rebuilt by the model being trained drift (on the preset its early updates
    made it stop calling tools, and the evidence vanished from the context it was scored in)."""
    trajectories = G.greedy_run(rollout, tasks, cfg.eval_chunk, desc="stage-1 contexts")
    return [t.ids[:_last_turn_start(t.mask)] for t in trajectories], trajectories


def _last_turn_start(mask: list[int]) -> int:
    end = len(mask)
    while end > 0 and mask[end - 1] == 1:
        end -= 1
    return end


def pairwise_accuracy(model, rollout: Rollout, tasks, contexts, cfg: Config) -> dict:
    """Per-task correctness on the valid tasks: the current policy's greedy answer (invalid = wrong), and the sign
    of the likelihood margin in the stage-1 context. Evaluated in every process on all tasks (identical numbers)."""
    agent = [float(t.reward == 1.0) for t in G.greedy_run(rollout, tasks, cfg.eval_chunk)]
    right = (task_margins(model, rollout, tasks, contexts, cfg, grad=False) > 0).float()
    return {"agent": agent, "likelihood": right.tolist(), "agent_accuracy": float(np.mean(agent)),
            "likelihood_accuracy": float(right.mean())}


def task_margins(model, rollout: Rollout, tasks, contexts, cfg: Config, grad: bool) -> torch.Tensor:
    """[T] log pi(correct answer | context) - log pi(other answer | context) for each task."""
    answers = {c: rollout.tokenizer.encode(answer_text(c), add_special_tokens=False) for c in "AB"}
    with torch.set_grad_enabled(grad):
        return choice_margins(model, contexts, answers, [t.answer for t in tasks], cfg.temperature)


# ------------------------------------------------------------------------------------------------------------------
# The logistic update (the grpo objective is train_grpo.update, unchanged)
# ------------------------------------------------------------------------------------------------------------------


def logistic_update(model, optimizer, rollout: Rollout, tasks, contexts, replay, cfg: Config,
                    info: D.DistInfo) -> dict:
    """One step of Proposition 4.2's loss on this rank's tasks, each scored in its stage-1 context
    (``answer_contexts``), plus ``replay_coef`` x the rehearsal NLL on ``replay`` (stage-1 ranking trajectories,
    ``replay_trajectories``). The Prop 4.2 mean is over the GLOBAL number of pairs, so the gradient does not depend
    on the number of ranks; the rehearsal term is a mean over this rank's equal-sized batch, averaged over ranks by
    FSDP, i.e. a global mean too. Tasks come in (MORE, LESS) pairs unless unidirectional."""
    margins = task_margins(model, rollout, tasks, contexts, cfg, grad=True)
    more, less = (margins, None) if cfg.unidirectional else (margins[0::2], margins[1::2])
    loss, metrics = bidirectional_loss(more, less)
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
    rehearsal; the ``grpo`` objective has its KL term instead)."""
    return [(t.ids, t.mask) for t in G.greedy_run(rollout, instances, cfg.eval_chunk, desc="rehearsal data")
            if t.invalid_reason is None]


def replay_batch(replay: list, step: int, cfg: Config, info: D.DistInfo) -> list:
    """This rank's ``replay_batch`` rehearsal trajectories of ``step``, drawn from (seed, step, rank): a resumed run
    draws the same ones."""
    if not replay or cfg.replay_coef <= 0:
        return []
    rng = random.Random(cfg.seed * 1_000_003 + step * 1_009 + info.rank)
    return rng.sample(replay, min(len(replay), cfg.replay_batch))


# ------------------------------------------------------------------------------------------------------------------
# Main: config -> setup -> mine -> loop (tasks -> update -> log -> checkpoint) -> before / after report
# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    cfg = parse_args(argv)
    info, out = G.start_run(cfg)
    if not (Path(cfg.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {cfg.model} is not a model folder; run train_grpo.py first (its out/final)")
    if cfg.batch_size % info.world or (cfg.objective == "logistic" and not cfg.unidirectional and cfg.batch_size % 2):
        raise SystemExit(f"error: --batch-size {cfg.batch_size} must split over {info.world} ranks (and be even)")

    # setup (as in train_grpo: the trained model is sharded; rollouts use an unsharded copy)
    data = load_dataset(cfg.dataset)
    toolbox = G.make_toolbox(cfg, data)
    agent_cfg = G.agent_config(cfg)
    tokenizer = load_tokenizer(cfg.model)
    model = load_pretrained(cfg.model, dtype=torch.float32 if info.world > 1 else getattr(torch, cfg.dtype),
                            device=info.device)
    ref_model = None
    if cfg.objective == "grpo" and cfg.kl_coef > 0:
        ref_model = D.shard(G._frozen_copy(model), info, cfg.dtype == "bfloat16")
    model = D.shard(model, info, cfg.dtype == "bfloat16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, G.lr_lambda(cfg))
    rollout_model = D.refresh_rollout_copy(model, None, info)
    rollout = Rollout(Engine(rollout_model, cfg.max_context), tokenizer, data, toolbox, agent_cfg)

    # mine (train pairs to learn from, valid pairs to measure), then the bidirectional tasks
    train_instances = load_instances(cfg.dataset, "train")
    train_instances = train_instances[:cfg.mine_instances] if cfg.mine_instances else train_instances
    valid = load_instances(cfg.dataset, "valid")
    if cfg.resume or cfg.pairs_from:  # resume: the pairs mined with the stage-1 policy, not the half-trained one
        source = out if cfg.resume else Path(cfg.pairs_from)
        (train_pairs, mining), (valid_pairs, valid_mining) = (_mined(source / f"pairs_{split}.jsonl")
                                                              for split in ("train", "valid"))
        if info.is_main and source != out:  # this run's out/ holds the pairs it trained on (and resumes with)
            write_pairs(out / "pairs_train.jsonl", train_pairs, mining)
            write_pairs(out / "pairs_valid.jsonl", valid_pairs, valid_mining)
    else:
        train_pairs, mining = mine(rollout, train_instances, cfg, info, out / "pairs_train.jsonl", "train")
        valid_pairs, valid_mining = mine(rollout, valid[:cfg.valid_mine_instances],
                                         dataclasses.replace(cfg, random_negatives=False), info,
                                         out / "pairs_valid.jsonl", "valid")
    tasks = bidirectional_tasks(train_pairs, cfg.seed, cfg.unidirectional, "train")
    valid_tasks = bidirectional_tasks(valid_pairs, cfg.seed, False, "valid")
    if not tasks or not valid_tasks:
        raise SystemExit("error: mining found no violations to learn from or to measure on")
    per_unit = 1 if cfg.unidirectional or cfg.objective == "grpo" else 2  # logistic keeps MORE / LESS together
    # every rank builds every context (simple and deterministic; a rank-split + gather would save time at scale)
    contexts = answer_contexts(rollout, tasks, cfg)[0] if cfg.objective == "logistic" else [None] * len(tasks)
    if cfg.train_context_tokens and cfg.objective == "logistic":  # train on the tails (evaluation: whole contexts)
        contexts = [c[-cfg.train_context_tokens:] for c in contexts]
    replay = replay_trajectories(rollout, train_instances[:cfg.replay_instances], cfg) \
        if cfg.objective == "logistic" and cfg.replay_coef > 0 else []
    valid_contexts = answer_contexts(rollout, valid_tasks, cfg)[0]  # built before a resumed checkpoint is loaded
    # the control: valid pairs with a RANDOM negative. Mined pairs are, by construction, those where the stage-1
    # evidence is wrong; a model that learns to distrust that evidence wins on them and loses here.
    control_tasks = bidirectional_tasks(random_pairs(valid[:cfg.valid_mine_instances], cfg.seed + 1), cfg.seed)
    probes = {"mined": (valid_tasks, valid_contexts),
              "random": (control_tasks, answer_contexts(rollout, control_tasks, cfg)[0])}
    units = [list(zip(tasks, contexts))[i:i + per_unit] for i in range(0, len(tasks), per_unit)]
    stream = G.DataStream(units, cfg.seed, info)
    steps = cfg.steps or math.ceil(cfg.epochs * len(tasks) / cfg.batch_size)
    start = G.load_checkpoint(model, optimizer, scheduler, stream, info, out) if cfg.resume else 0
    rollout.engine.model = rollout_model = D.refresh_rollout_copy(model, rollout_model, info)
    metrics_file = open(out / "metrics.jsonl", "a") if info.is_main else None
    before = _evaluation(model, rollout, probes, valid[:cfg.eval_instances], cfg, info, out, start)

    # loop
    bar = tqdm(range(start, steps), desc=f"PPR ({cfg.objective})", disable=not info.is_main, initial=start,
               total=steps)
    for step in bar:
        t0 = time.perf_counter()
        record = {"step": step + 1}
        if cfg.objective == "grpo":  # samples with the rollout copy: refresh it; logistic scores fixed contexts
            rollout.engine.model = rollout_model = D.refresh_rollout_copy(model, rollout_model, info)
            groups, weights, trajectories, dropped, padded = G.collect_groups(rollout, _Flat(stream), cfg, step, info)
            record.update({**G.summarize(trajectories, info), **G.group_stats(trajectories, cfg.group_size, info),
                           **G._update_metrics(G.update(model, ref_model, optimizer, groups, weights, cfg, info),
                                               info), "dropped_groups": D.all_reduce_sum([dropped], info)[0]})
        else:
            batch = [tc for unit in stream.take(cfg.batch_size // info.world // per_unit) for tc in unit]
            record.update(logistic_update(model, optimizer, rollout, [t for t, _ in batch], [c for _, c in batch],
                                          replay_batch(replay, step, cfg, info), cfg, info))
        scheduler.step()
        record.update({"lr": scheduler.get_last_lr()[0], "step_s": time.perf_counter() - t0})
        G._log(metrics_file, record)
        bar.set_postfix(loss=f"{record.get('loss', 0.0):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            G.save_checkpoint(model, optimizer, scheduler, stream, step + 1, cfg, info, out)
        if cfg.stop_after and step + 1 - start >= cfg.stop_after:
            D.shutdown(info)
            return

    rollout.engine.model = D.refresh_rollout_copy(model, rollout_model, info)
    after = _evaluation(model, rollout, probes, valid[:cfg.eval_instances], cfg, info, out, steps)
    G.export(model, info, out / "final", tokenizer)
    if info.is_main:
        marker = Path(cfg.model) / G.PRESET_MARKER
        if marker.is_file():  # evaluate.py reads the agent settings (and the warm start) from it
            (out / "final" / G.PRESET_MARKER).write_text(marker.read_text())
        report(out, before, after, mining, valid_mining)
    D.shutdown(info)


class _Flat:
    """A DataStream of one-task units seen as a stream of tasks (what train_grpo.collect_groups takes)."""

    def __init__(self, stream):
        self.stream = stream

    def take(self, n: int):
        return [unit[0][0] for unit in self.stream.take(n)]  # the task of each (task, context) unit


def _evaluation(model, rollout, probes: dict, valid_instances, cfg: Config, info, out: Path, step: int) -> dict:
    """Pairwise accuracy on the mined valid tasks (agent answer and likelihood), the likelihood accuracy on the
    random-negative control tasks, and the ranking task's target ranks; saved in out/evals/. A resumed run reads
    the step-0 evaluation back instead of recomputing it on a changed model."""
    path = out / "evals" / f"step_{step:06d}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ranking, ranks = G.evaluate(rollout, valid_instances, info, cfg.eval_chunk)
    control = (task_margins(model, rollout, *probes["random"], cfg, grad=False) > 0).float()
    result = {"step": step, **pairwise_accuracy(model, rollout, *probes["mined"], cfg), "ranks": ranks,
              "likelihood_random": control.tolist(), "likelihood_random_accuracy": float(control.mean()),
              "eval_H@1": ranking["eval_H@1"], "eval_N@10": ranking["eval_N@10"], "eval_valid": ranking["eval_valid"]}
    if info.is_main:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result))
    return result


def report(out: Path, before: dict, after: dict, mining: dict, valid_mining: dict) -> dict:
    """Before vs after with paired bootstrap CIs; printed and written to out/report.json."""
    hit1 = [[float(r == 1) for r in e["ranks"]] for e in (before, after)]
    series = {"pairwise accuracy, agent answer (greedy, tools)": (before["agent"], after["agent"]),
              "pairwise accuracy, likelihood margin": (before["likelihood"], after["likelihood"]),
              "control: likelihood accuracy, random negatives": (before["likelihood_random"],
                                                                 after["likelihood_random"]),
              "ranking H@1 on valid instances": tuple(hit1)}
    rows = {name: paired_bootstrap(a, b) for name, (a, b) in series.items()}
    means = {name: (float(np.mean(a)), float(np.mean(b))) for name, (a, b) in series.items()}
    lines = [f"train pairs: {mining.get('violations')} (violation rate {mining.get('violation_rate', 1.0):.3f}); "
             f"valid pairs: {valid_mining['violations']} ({len(before['agent'])} tasks)",
             f"{'metric':<50}{'before':>8}{'after':>8}   change [95% CI]"]
    for name, ci in rows.items():
        lines.append(f"{name:<50}{means[name][0]:>8.3f}{means[name][1]:>8.3f}   {ci['diff']:+.4f} "
                     f"[{ci['lo']:+.4f}, {ci['hi']:+.4f}]")
    margin = rows["pairwise accuracy, likelihood margin"]
    if margin["lo"] <= 0 <= margin["hi"]:
        lines.append("note: no significant change in pairwise accuracy. The bidirectional loss can sit at 2 log 2 "
                     "for hundreds of steps before the model reads MORE / LESS (docs/ppr.md); train longer "
                     "(--epochs) or check metrics.jsonl's loss.")
    print("\n".join(lines), flush=True)
    result = {"rows": {k: {"before": means[k][0], "after": means[k][1], **rows[k]} for k in rows},
              "mining": mining, "valid_mining": valid_mining}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
