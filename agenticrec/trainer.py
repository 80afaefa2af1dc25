"""The training machinery both stages share: the run's start, the data stream, rollouts with dynamic sampling, the
GRPO update, greedy evaluation and the logged statistics. ``train_grpo.py`` and ``train_ppr.py`` are the loops
around it; ``agenticrec/checkpoint.py`` saves and resumes them.

    collect_groups  ──> GroupBatch (G trajectories per instance; groups without signal dropped and refilled)
    update          ──> Objective applied: group advantages, grpo_loss over the GLOBAL batch, one optimiser step
    evaluate        ──> greedy rollouts on fixed instances: metrics reduced over ranks, every instance's rank
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agenticrec import distributed as D
from agenticrec.agent import (CONTEXT_LIMIT, TOOL_BUDGET_EXCEEDED, TOOLS_DISABLED, TURN_TOKEN_LIMIT, AgentConfig,
                              Rollout, Trajectory)
from agenticrec.cli import option
from agenticrec.data import Dataset, interleave, parse_candidate_sizes, split_instances
from agenticrec.engine import Engine
from agenticrec.grpo import advantage_stats, group_advantages, grpo_loss, keep_group
from agenticrec.model import load_pretrained
from agenticrec.parsing import Reason
from agenticrec.policy import group_logprobs
from agenticrec.reward import ranking_metrics
from agenticrec.sasrec import TrainConfig, load_or_train
from agenticrec.stats import paired_bootstrap
from agenticrec.tools import TOOLS, Toolbox

log = logging.getLogger("agenticrec.trainer")


# ------------------------------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------------------------------


def start_run(threads: int, out: str, timeout_minutes: float = 60.0) -> tuple[D.DistInfo, Path]:
    """Logging, pinned threads, the process group and the output folder: the start of every training script."""
    warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
    warnings.filterwarnings("ignore", message=".*lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    info = D.init_distributed(timeout_minutes=timeout_minutes)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return info, folder


CPU_KV_BUDGET_GB = 4.0  # the default KV budget of one engine call on CPU
KV_FREE_FRACTION = 0.6  # of the free GPU memory; the rest: decoding transients (math SDPA: K/V per query head), slack


@dataclass
class TrainingConfig:
    """The settings both training scripts share (each script's Config adds its own): the optimiser, the agent's
    budgets, the GRPO objective and dynamic sampling, evaluation, checkpoints and the run."""

    steps: int = option(0, "optimiser steps; 0 = derived from --epochs")
    lr: float = option(1e-6, "AdamW learning rate (after warm-up)")
    warmup_steps: int = option(10, "linear learning-rate warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient-norm clipping")
    temperature: float = option(0.6, "sampling temperature; training log-probs use the same")
    max_tool_calls: int = option(10, "T_max: one more makes the trajectory invalid")
    max_turn_tokens: int = option(512, "sampled tokens per turn")
    max_context: int = option(6144, "tokens per trajectory (prompt + turns + observations)")
    tools: str = option("all", 'comma-separated tool names, "all", or "none" (reasoning-only ablation)')
    kl_coef: float = option(1e-3, "beta; 0 loads no reference model (GRPO)")
    kl_estimator: str = option("k3", "k1 | k2 | k3")
    clip_eps: float = option(0.2, "PPO clip epsilon")
    advantage: str = option("mean", "mean (paper) | std | rloo")
    aggregation: str = option("token_mean", "token_mean | sequence_mean (over the global batch)")
    mu: int = option(1, "optimiser updates per rollout batch (1: ratio exactly 1)")
    update_rows: int = option(
        0, "continuations per forward/backward pass in the update (0 = the whole group): bounds its activations; "
           "each pass re-encodes the group's prompt")
    drop_all_negative: bool = option(True, "dynamic sampling: drop groups whose rewards are all negative")
    drop_all_equal: bool = option(False, "also drop groups with zero reward variance (equal rewards)")
    refill_rounds: int = option(3, "extra rollout rounds to refill dropped groups")
    kv_budget: float = option(
        0.0, "GB of KV cache one engine call may take; it sets how many rows each call holds (rows are allocated at "
             f"--max-context). 0 = auto: on GPU {KV_FREE_FRACTION:g} x the memory free once the model, its "
             f"rollout copy, the reference and the optimiser states are counted; on CPU {CPU_KV_BUDGET_GB:g} GB")
    rollout_groups: int = option(
        0, "at most this many groups in flight in a rollout call (the rest wait for their slots); 0 = as many as "
           "--kv-budget holds")
    decode: str = option("dynamic", "the engine's decode step: dynamic | static (fixed shapes; a CUDA graph on GPU) | "
                                    "compiled (static under torch.compile); see docs/engine.md")
    eval_instances: int = option(1000, "valid instances per evaluation (greedy)")
    eval_chunk: int = option(0, "at most this many instances per evaluation / mining call; 0 = as --kv-budget holds")
    checkpoint_every: int = option(50, "steps between checkpoints")
    resume: bool = option(False, "continue from out/checkpoints/latest")
    dtype: str = option("float32", "compute dtype, float32 | bfloat16: bf16 mixed precision over fp32 master weights "
                                   "(FSDP's under torchrun, autocast in one process); rollouts, the reference and "
                                   "the export are in this dtype")
    dist_timeout: float = option(60.0, "minutes a collective waits for a slower rank before the run aborts")
    threads: int = option(2, "torch threads per process (pinned: budget by steps, not wall clock)")
    seed: int = option(0, "all randomness derives from (seed, step, rank)")
    stop_after: int = option(0, "stop after this many steps of this run (tests of resume); 0 = no stop")
    train_candidates: str = option(
        "20", "candidate-set sizes of the train instances (GRPO's stream; PPR's mining and rehearsal), a comma list "
              "(20,50: interleaved; a size other than 20 is built by the instance protocol); under the preset the "
              "warm start trains on the same sizes")
    eval_candidates: str = option(
        "", "candidate-set sizes of the valid evaluations before, during and after training, a comma list "
            "(--eval-instances of each, interleaved); default: those of --train-candidates (PPR: the stage-1 "
            "checkpoint's)")


def make_toolbox(data: Dataset, tools: str, toolbox_class=Toolbox, info: D.DistInfo | None = None,
                 sasrec_train: TrainConfig = TrainConfig()) -> Toolbox:
    """The toolbox over ``data`` with SASRec fitted on its train split as ``sasrec_train`` says (trained once, by
    rank 0, on a first run); ``tools`` is "all", "none" (every tool is built; the agent is told of none) or a comma
    list."""
    enabled = None if tools in ("all", "none") else tuple(tools.split(","))
    unknown = set(enabled or ()) - {t.name for t in TOOLS}
    if unknown:
        raise SystemExit(f"error: unknown tool(s) in --tools: {', '.join(sorted(unknown))}")
    sasrec = rank0_first(lambda: load_or_train(data, data.fixed_instances("valid"), train_cfg=sasrec_train), info)
    return toolbox_class(data, sasrec, enabled=enabled)


def rank0_first(build, info: D.DistInfo | None):
    """``build()`` on rank 0, then, after a barrier, on the other ranks: for artifacts cached on disk (SASRec, the
    preset's tokenizer), which rank 0 builds and writes once and the others then read."""
    if info is None or info.world == 1:
        return build()
    result = build() if info.is_main else None
    D.barrier(info)
    return result if info.is_main else build()


def agent_config(cfg, temperature: float | None = None) -> AgentConfig:
    """The rollout settings a script's Config names (its ``tools``, ``max_tool_calls``, ``max_turn_tokens``,
    ``max_context`` and ``temperature``, unless one is given)."""
    return AgentConfig(max_tool_calls=cfg.max_tool_calls, max_turn_tokens=cfg.max_turn_tokens,
                       max_context=cfg.max_context, use_tools=cfg.tools != "none",
                       temperature=cfg.temperature if temperature is None else temperature)


def train_sizes(cfg: TrainingConfig) -> tuple[int, ...]:
    """The candidate-set sizes of ``--train-candidates``; a bad list is a clear error (SystemExit)."""
    return _sizes(cfg.train_candidates, "--train-candidates")


def eval_sizes(cfg: TrainingConfig) -> tuple[int, ...]:
    """The candidate-set sizes of ``--eval-candidates``, by default those of ``--train-candidates``; a bad list is a
    clear error (SystemExit)."""
    return _sizes(cfg.eval_candidates, "--eval-candidates") if cfg.eval_candidates else train_sizes(cfg)


def _sizes(text: str, flag: str) -> tuple[int, ...]:
    try:
        return parse_candidate_sizes(text)
    except ValueError as e:
        raise SystemExit(f"error: {flag}: {e}") from None


def valid_instances(data: Dataset, cfg: TrainingConfig) -> list:
    """The valid instances every ranking evaluation of a run uses: the first ``--eval-instances`` of each size in
    ``eval_sizes``, interleaved. A policy trained on several sizes is checked on each of them, so a regression at
    one size (PPR mined on 20 candidates alone answered 0.003 of 50-candidate requests validly) shows in the run's
    own report; ``size_breakdown`` splits the results back."""
    return interleave([split_instances(data, "valid", n)[:cfg.eval_instances] for n in eval_sizes(cfg)])


def size_breakdown(instances, before: list[int], after: list[int]) -> dict[int, dict]:
    """Before vs after on each candidate-set size of ``instances``, from the target ranks of two evaluations
    (0 = absent or invalid): {size: {"n", "H@1", "N@10"}}, each metric a paired bootstrap result with the two means
    ("before", "after"). Empty for one size: the run's overall figures are that size's."""
    for values in (before, after):
        if len(values) != len(instances):
            raise ValueError(f"{len(values)} values for {len(instances)} instances")
    groups: dict[int, list] = {}
    for x, pair in zip(instances, zip(before, after)):
        groups.setdefault(len(x.candidates), []).append(pair)
    if len(groups) < 2:
        return {}
    result = {}
    for n, pairs in groups.items():
        start, end = ([ranking_metrics(r or None) for r in ranks] for ranks in zip(*pairs))
        result[n] = {"n": len(pairs)}
        for k in ("H@1", "N@10"):
            a, b = [m[k] for m in start], [m[k] for m in end]
            result[n][k] = {"before": float(np.mean(a)), "after": float(np.mean(b)), **paired_bootstrap(a, b)}
    return result


def size_lines(breakdown: dict[int, dict], before: str, after: str) -> list[str]:
    """One report line per size of a ``size_breakdown``."""
    return [f"N = {n}, {r['n']} instances: " + "; ".join(
        f"{k} {r[k]['before']:.3f} ({before}) -> {r[k]['after']:.3f} ({after}), {r[k]['diff']:+.4f} "
        f"[{r[k]['lo']:+.4f}, {r[k]['hi']:+.4f}]" for k in ("H@1", "N@10")) for n, r in breakdown.items()]


def load_policy(folder: str, info: D.DistInfo):
    """(model, tokenizer) of a Hugging Face Qwen3 folder, the weights in fp32 whatever they are stored in: they are
    the master weights the optimiser updates; ``D.shard`` sets the dtype the model computes in."""
    from agenticrec.tokenizer import load_tokenizer
    return load_pretrained(folder, dtype=torch.float32, device=info.device), load_tokenizer(folder)


def reference_policy(model: torch.nn.Module, dtype: torch.dtype, info: D.DistInfo) -> torch.nn.Module:
    """The frozen reference of the KL term: a copy of ``model`` stored in the compute ``dtype`` (no master weights:
    it is never updated), sharded like the policy."""
    return D.shard(frozen_copy(model).to(dtype), info, dtype)


def make_rollout(model: torch.nn.Module, cfg, info: D.DistInfo, tokenizer, prompt_data, toolbox) -> Rollout:
    """The agent loop over an engine that generates with ``model``'s rollout copy (``sync_rollout``), each call
    within ``kv_budget``'s bytes."""
    copy = D.refresh_rollout_copy(model, None, info)
    budget = kv_budget(cfg.kv_budget, model, info)
    engine = Engine(copy, cfg.max_context, budget, decode=cfg.decode)
    if info.is_main:
        log.info("rollouts in %s, %s decode step; KV budget %.2f GB per engine call: %d rows of %d tokens",
                 engine.dtype, cfg.decode, budget / 1e9, engine.max_rows, cfg.max_context)
    return Rollout(engine, tokenizer, prompt_data, toolbox, agent_config(cfg))


def kv_budget(gb: float, model: torch.nn.Module, info: D.DistInfo) -> int:
    """Bytes of KV cache per engine call: ``gb`` when given (> 0); on CPU ``CPU_KV_BUDGET_GB``; on GPU
    ``KV_FREE_FRACTION`` of the free memory less AdamW's two fp32 moments (allocated at the first step), the
    smallest over ranks so that every rank sizes its calls alike. Call it with the rollout copy resident."""
    if gb > 0:
        return int(gb * 1e9)
    if info.device.type != "cuda":
        return int(CPU_KV_BUDGET_GB * 1e9)
    free, _ = torch.cuda.mem_get_info(info.device)
    local = sum(p.to_local().nbytes if hasattr(p, "to_local") else p.nbytes
                for p in model.parameters() if p.requires_grad)
    budget = int(KV_FREE_FRACTION * (free - 2 * local))
    return min(D.all_gather_objects(budget, info))


def rows_per_call(rollout: Rollout, cap: int = 0, group_size: int = 1) -> int:
    """Instances per engine call: as many as the engine's KV budget holds (each brings ``group_size`` rows), and at
    most ``cap`` (0 = no cap)."""
    fit = rollout.engine.max_rows
    if fit is not None and fit < group_size:
        raise SystemExit(f"error: the KV budget holds {fit} rows of {rollout.engine.max_len} tokens, fewer than one "
                         f"group of {group_size}; raise --kv-budget or lower --max-context")
    sizes = [n for n in (cap, fit // group_size if fit is not None else 0) if n > 0]
    return min(sizes) if sizes else 1 << 30


def sync_rollout(rollout: Rollout, model: torch.nn.Module, info: D.DistInfo) -> None:
    """Rollouts sample from the current weights: an unsharded copy in the compute dtype, refreshed in place (or
    rebuilt after ``release_rollout``); in one fp32 process the model itself."""
    rollout.engine.model = D.refresh_rollout_copy(model, rollout.engine.model, info)


def release_rollout(rollout: Rollout, model: torch.nn.Module) -> None:
    """Free the rollout copy while the update runs (it is rebuilt by the next ``sync_rollout``); a no-op when the
    copy is the model itself."""
    if rollout.engine.model is not model:
        rollout.engine.model = None


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode with no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def warmup_schedule(optimizer, warmup_steps: int):
    """Linear learning-rate warm-up over ``warmup_steps``, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


class MetricsLog:
    """metrics.jsonl of a run, written by rank 0 only, one JSON record per line, flushed at once."""

    def __init__(self, path: Path, info: D.DistInfo):
        self.file = open(path, "a") if info.is_main else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


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


@dataclass(frozen=True)
class Sampling:
    """How one step's groups are drawn (dynamic sampling, docs/grpo.md)."""

    groups_per_rank: int  # the batch size over all ranks / ranks
    group_size: int  # G rollouts per instance
    drop_all_negative: bool  # drop groups whose rewards are all negative
    drop_all_equal: bool  # drop groups with zero reward variance
    refill_rounds: int  # extra rollout rounds to refill dropped groups
    rollout_groups: int  # at most this many groups in flight in an engine call; 0 = as many as the KV budget holds
    seed: int

    @classmethod
    def of(cls, cfg, info: D.DistInfo) -> "Sampling":
        """From a script's Config (``batch_size`` over all ranks and the fields of the same names)."""
        return cls(groups_per_rank=cfg.batch_size // info.world, group_size=cfg.group_size,
                   drop_all_negative=cfg.drop_all_negative, drop_all_equal=cfg.drop_all_equal,
                   refill_rounds=cfg.refill_rounds, rollout_groups=cfg.rollout_groups, seed=cfg.seed)


@dataclass
class GroupBatch:
    """This rank's groups for one step. ``weights`` is 1 for a kept group and 0 for a padded one (a dropped group
    re-used so that every rank runs the same forward passes; it carries no loss)."""

    groups: list[list[Trajectory]]
    weights: list[float]
    trajectories: list[Trajectory]  # every trajectory rolled out this step, kept or dropped (for the logs)
    dropped: int = 0
    padded: int = 0


def collect_groups(rollout: Rollout, stream: DataStream, sampling: Sampling, step: int, info: D.DistInfo) -> GroupBatch:
    """Roll out, drop uninformative groups, refill; pad what could not be filled with zero-weight groups."""
    need, G = sampling.groups_per_rank, sampling.group_size
    kept, dropped, all_trajectories = [], [], []
    for round_ in range(1 + sampling.refill_rounds):
        instances = stream.take(need - len(kept))
        key = f"{sampling.seed}-{step}-{info.rank}-{round_}-0"  # "-0": the first call's key when rounds were chunked
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        # one engine call: as many groups in flight as the KV budget holds, the rest queued (continuous batching)
        slots = min(rows_per_call(rollout, sampling.rollout_groups, G), len(instances)) * G
        trajectories = rollout.run(instances, group_size=G, seed=seed, slots=slots) if instances else []
        all_trajectories += trajectories
        groups = [trajectories[g * G:(g + 1) * G] for g in range(len(instances))]
        rewards = torch.tensor([[t.reward for t in group] for group in groups])
        keep = keep_group(rewards, sampling.drop_all_negative, sampling.drop_all_equal)
        kept += [g for g, k in zip(groups, keep) if k]
        dropped += [g for g, k in zip(groups, keep) if not k]
        if len(kept) == need:
            break
    padded = max(0, need - len(kept))
    return GroupBatch(kept + dropped[:padded], [1.0] * len(kept) + [0.0] * padded, all_trajectories, len(dropped),
                      padded)


# ------------------------------------------------------------------------------------------------------------------
# The update
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """The GRPO objective and the optimiser step around it (``agenticrec.grpo.grpo_loss``, docs/grpo.md)."""

    advantage: str  # mean (paper) | std | rloo
    aggregation: str  # token_mean | sequence_mean, over the global batch
    clip_eps: float
    kl_coef: float  # beta
    kl_estimator: str  # k1 | k2 | k3
    temperature: float  # the sampling temperature: log-probs are taken at it
    mu: int  # optimiser steps per rollout batch (1: the ratio is exactly 1)
    grad_clip: float
    update_rows: int  # continuations per forward pass in the update (0 = the whole group): bounds its activations

    @classmethod
    def of(cls, cfg) -> "Objective":
        """From a script's Config (the fields of the same names)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclass
class GroupTensors:
    """One group as the update reads it: the shared prompt, each trajectory's ids after it, their loss mask and
    the sampler's log-probs of those ids ([G, L], 0 where the mask is 0 or past a row's end)."""

    prompt: list[int]
    continuations: list[list[int]]
    mask: torch.Tensor
    sampler_logp: torch.Tensor

    def rows(self, start: int, end: int) -> "GroupTensors":
        """Continuations start..end-1 of the group, padded to their own longest."""
        continuations = self.continuations[start:end]
        L = max(len(c) for c in continuations)
        return GroupTensors(self.prompt, continuations, self.mask[start:end, :L], self.sampler_logp[start:end, :L])


def group_tensors(group: list[Trajectory], device) -> GroupTensors:
    prompt = group[0].ids[:group[0].prompt_len]
    continuations = [t.ids[t.prompt_len:] for t in group]
    L = max(len(c) for c in continuations)
    pad = [[0] * (L - len(c)) for c in continuations]
    mask = torch.tensor([t.mask[t.prompt_len:] + p for t, p in zip(group, pad)], dtype=torch.float, device=device)
    sampler = torch.tensor([t.logprobs[t.prompt_len:] + p for t, p in zip(group, pad)], device=device)
    return GroupTensors(prompt, continuations, mask, sampler)


def update(model, ref_model, optimizer, batch: GroupBatch, objective: Objective, info: D.DistInfo,
           rehearsal: Callable[[], torch.Tensor] | None = None) -> dict:
    """``objective.mu`` optimiser steps on this rank's groups; the loss normaliser is global (all-reduced), so the
    gradient does not depend on how groups are spread over ranks. Returns this rank's sums (``update_metrics``
    reduces them). ``rehearsal``, when given, returns a loss whose gradient each of those steps adds (PPR's
    ``--replay-coef``: an NLL on the stage-1 policy's own ranking trajectories); every rank calls it equally often."""
    rewards = torch.tensor([[t.reward for t in group] for group in batch.groups])
    advantages = group_advantages(rewards, objective.advantage)
    tensors = [group_tensors(group, info.device) for group in batch.groups]
    counts = [float(g.mask.sum()) if objective.aggregation == "token_mean" else float(len(g.continuations))
              for g in tensors]
    local = sum(w * c for w, c in zip(batch.weights, counts))  # padded (zero-weight) groups do not dilute the mean
    normalizer = D.all_reduce_sum([local], info)[0] / info.world
    if normalizer == 0:  # every group on every rank was dropped: nothing to learn from (the same on all ranks)
        return {"skipped_update": 1.0, "loss": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "tokens": 0.0,
                "neg_logp_sum": 0.0, "sampler_gap_sum": 0.0, "grad_norm": 0.0}
    # the forward passes: each group in pieces of update_rows continuations (the same count on every rank)
    step = objective.update_rows or len(tensors[0].continuations)
    pieces = [(g.rows(r, r + step), advantages[i, r:r + step], batch.weights[i])
              for i, g in enumerate(tensors) for r in range(0, len(g.continuations), step)]
    old = _logprobs(model, pieces, objective.temperature) if objective.mu > 1 else None
    refs = _logprobs(ref_model, pieces, objective.temperature) if ref_model is not None else [None] * len(pieces)
    metrics = Counter()  # sums over pieces, but sampler_gap_max: a running max (below)
    for epoch in range(objective.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, (g, adv, weight) in enumerate(pieces):
            logp = group_logprobs(model, g.prompt, g.continuations, objective.temperature, g.mask)
            loss_mask = g.mask * weight  # a padded group carries no loss: neither its advantages nor its KL
            loss, m = grpo_loss(logp, old_logp=old[i] if old is not None else logp.detach(),
                                advantages=adv.to(logp.device), mask=loss_mask, normalizer=normalizer,
                                ref_logp=refs[i], clip_eps=objective.clip_eps, kl_coef=objective.kl_coef,
                                kl_estimator=objective.kl_estimator, aggregation=objective.aggregation)
            loss.backward()
            sums = _loss_sums(loss, m, logp, loss_mask, g, first_pass=epoch == 0)
            metrics["sampler_gap_max"] = max(metrics["sampler_gap_max"], sums.pop("sampler_gap_max", 0.0))
            metrics.update(sums)
        if rehearsal is not None:
            rehearsal().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), objective.grad_clip)
        if not torch.isfinite(grad_norm):  # never let one bad batch poison the weights; counted in the logs
            log.warning("non-finite gradient norm; update skipped")
            metrics["nonfinite_skipped"] += 1
            continue
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no gradients held through the next rollout phase
    metrics["grad_norm"] = float(grad_norm)
    trained = advantages * torch.tensor(batch.weights)[:, None]  # what the loss sees: 0 for a padded group
    metrics.update(advantage_stats(trained))
    return dict(metrics)


def _logprobs(model, pieces: list[tuple], temperature: float) -> list[torch.Tensor]:
    """Each piece's log-probs under ``model`` without gradients (pi_old for mu > 1, or the reference policy)."""
    with torch.no_grad():
        return [group_logprobs(model, g.prompt, g.continuations, temperature, g.mask) for g, _, _ in pieces]


def _loss_sums(loss, m: dict, logp, loss_mask, g: GroupTensors, first_pass: bool) -> dict:
    """One group's contribution to the logged sums, and its ``sampler_gap_max``. ``sampler_gap_sum``: |trainer -
    sampler| log-prob of the sampled tokens at the first pass (before any step): 0 up to kernel noise when rollout
    and training agree (the noise of bf16 against fp32 master weights: small), large when they do not (a stale copy,
    a mask or temperature mismatch)."""
    tokens = m["tokens"]
    sums = {"loss": loss.item(), "kl_sum": m["kl"] * tokens, "clip_sum": m["clip_frac"] * tokens, "tokens": tokens,
            "neg_logp_sum": float(-(logp.detach() * loss_mask).sum())}
    if first_pass:
        gap = (logp.detach() - g.sampler_logp).abs() * (loss_mask > 0)
        sums["sampler_gap_sum"] = float(gap.sum())
        sums["sampler_gap_max"] = float(gap.max())
    return sums


def update_metrics(stats: dict, info: D.DistInfo) -> dict:
    """``update``'s sums reduced over ranks into per-token means: the loss, KL, clip fraction, Monte-Carlo entropy
    (mean -log pi of the sampled tokens) and the sampler-vs-trainer log-prob gap (its mean, and its max over every
    trained token of every rank)."""
    names = ["loss", "kl_sum", "clip_sum", "tokens", "neg_logp_sum", "sampler_gap_sum", "skipped_update",
             "nonfinite_skipped"]
    s = dict(zip(names, D.all_reduce_sum([float(stats.get(k, 0.0)) for k in names], info)))
    tokens = max(1.0, s["tokens"])
    return {"skipped_update": s["skipped_update"] > 0, "nonfinite_skipped": s["nonfinite_skipped"],
            "loss": s["loss"], "kl": s["kl_sum"] / tokens, "clip_frac": s["clip_sum"] / tokens,
            "entropy_mc": s["neg_logp_sum"] / tokens, "sampler_logp_gap": s["sampler_gap_sum"] / tokens,
            "sampler_logp_gap_max": max(D.all_gather_objects(float(stats.get("sampler_gap_max", 0.0)), info)),
            "grad_norm": stats["grad_norm"], **{k: v for k, v in stats.items() if k.startswith("adv_")}}


# ------------------------------------------------------------------------------------------------------------------
# Greedy evaluation and statistics
# ------------------------------------------------------------------------------------------------------------------


def greedy_rollout(rollout: Rollout) -> Rollout:
    """The same rollout (engine, tools, budgets) with greedy decoding."""
    return Rollout(rollout.engine, rollout.tokenizer, rollout.data, rollout.toolbox,
                   dataclasses.replace(rollout.cfg, temperature=0.0))


def greedy_run(rollout: Rollout, instances, cap: int = 0, desc: str | None = None) -> list[Trajectory]:
    """Greedy trajectories of ``instances``, as many per engine call as the KV budget holds (at most ``cap``); a
    tqdm bar when ``desc`` is given."""
    greedy, chunk = greedy_rollout(rollout), rows_per_call(rollout, cap)
    starts = tqdm(range(0, len(instances), chunk), desc=desc, leave=False, disable=desc is None)
    return [t for c in starts for t in greedy.run(instances[c:c + chunk])]


def rehearsal_data(rollout: Rollout, instances, cap: int = 0,
                   desc: str | None = None) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of the valid ``greedy_run`` trajectories of ``instances``: a policy's own answers, whose NLL keeps
    them while another objective trains (rehearsal)."""
    return [(t.ids, t.mask) for t in greedy_run(rollout, instances, cap, desc) if t.invalid_reason is None]


def evaluate(rollout: Rollout, instances, info: D.DistInfo, cap: int = 0) -> tuple[dict, list[int]]:
    """Greedy rollouts on fixed instances (split over ranks; engine calls sized by the KV budget, at most ``cap``
    instances): metrics summed over ranks, and every instance's target rank in order (0 = absent or invalid; for
    paired comparisons)."""
    trajectories = greedy_run(rollout, instances[info.rank::info.world], cap)
    ranks = [0.0] * len(instances)
    for i, t in zip(range(info.rank, len(instances), info.world), trajectories):
        ranks[i] = float(t.rank or 0)
    return summarize(trajectories, info, prefix="eval_"), [int(r) for r in D.all_reduce_sum(ranks, info)]


def evaluate_and_save(rollout: Rollout, instances, info: D.DistInfo, out: Path, step: int, cap: int = 0) -> dict:
    """``evaluate``, with every instance's target rank kept in out/evals/step_N.json for paired comparisons."""
    metrics, ranks = evaluate(rollout, instances, info, cap)
    if info.is_main:
        (out / "evals").mkdir(exist_ok=True)
        (out / "evals" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, **metrics, "ranks": ranks}))
    return metrics


# every reason a trajectory can be invalid for: the parser's and the agent's own
INVALID_REASONS = sorted({r.value for r in Reason} | {TOOL_BUDGET_EXCEEDED, TOOLS_DISABLED, TURN_TOKEN_LIMIT,
                                                      CONTEXT_LIMIT})
SUMMARY_KEYS = (["n", "reward", "valid", "truncated", "tool_calls", "tool_errors", "prompt", "generated",
                 "observation", "H@1", "H@5", "H@10", "N@5", "N@10"] + [f"calls_{t.name}" for t in TOOLS]
                + [f"last_{t.name}" for t in TOOLS] + [f"invalid_{r}" for r in INVALID_REASONS])


def summarize(trajectories, info: D.DistInfo, prefix: str = "") -> dict:
    """Rollout statistics, reduced over ranks: reward, metrics, invalid reasons, tool use, tokens."""
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
    totals = dict(zip(SUMMARY_KEYS, D.all_reduce_sum([float(sums[k]) for k in SUMMARY_KEYS], info)))
    n = max(1.0, totals["n"])
    out = {f"{prefix}{k}": totals[k] / n for k in SUMMARY_KEYS if k != "n"}
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


def tool_path_stats(trajectories, group_size: int, info: D.DistInfo) -> dict:
    """For each tool path (the called tools' names in order, "none" for an answer without a call) over every group
    rolled out this step, reduced over ranks: how many rollouts took it, their mean reward, and their mean
    group-mean advantage (reward minus its group's mean: what the update pushes towards, path by path). A path
    that GRPO favours has a positive mean advantage; one the policy drifts to with a negative one is noise winning."""
    sums: dict[str, list[float]] = {}
    for start in range(0, len(trajectories), group_size):
        group = trajectories[start:start + group_size]
        mean = sum(t.reward for t in group) / len(group)
        for t in group:
            path = ">".join(c.name for c in t.tool_calls) or "none"
            s = sums.setdefault(path, [0.0, 0.0, 0.0])
            s[0], s[1], s[2] = s[0] + 1, s[1] + t.reward, s[2] + t.reward - mean
    merged: dict[str, list[float]] = {}
    for part in D.all_gather_objects(sums, info):
        for path, s in part.items():
            merged[path] = [a + b for a, b in zip(merged.get(path, [0.0, 0.0, 0.0]), s)]
    return {path: {"n": n, "reward": r / n, "advantage": a / n} for path, (n, r, a) in sorted(merged.items())}
