"""The CPU preset's warm start: supervised learning on a deliberately imperfect scripted expert.

Not in the paper. The paper starts GRPO from Qwen3-4B-Instruct, a model that already knows the chat format, can
call tools and can rank a little. No such model can be downloaded here, so the CPU preset manufactures one: a tiny
Qwen3 is trained to imitate an expert that

- knows the format and the tools: thinks briefly, consults the ranking tools of its plan (``WarmStartConfig.plan``:
  co-occurrence with the history, then the similar users' taste) and answers with the top K of the last
  observation's ordering line (``ordering_line``, which ``agenticrec.preset.PresetToolbox`` appends: it orders by
  every tool consulted so far), copied verbatim;
- does not know whether the second tool is worth consulting: it consults it in half of its trajectories
  (``further_call``, exactly that share of each batch: ``stratified_coins``), whatever the instance. So GRPO's
  groups meet both choices from the first step (measured: 41 of 64 rollouts at GRPO's temperature of 0.6 take the
  second tool at the first step), and the frozen policy, the warm start, makes the choice by what it happened to
  pick up, not by which is better (greedy, on 300 valid requests: 0.61, 0.97 and 0.27 for the initial weights of
  seeds 0, 1 and 2).

Whether to consult it is the headroom GRPO must find, and the answer depends on the data. On the first 2,000 train
instances, expected reward (``agenticrec.reward``) of the co-occurrence order against that order with its ties
broken by the similar users' taste: Games 0.640 against 0.699 (they differ on 41 % of instances, by +0.06 on
average with a per-instance spread of 0.41), Beauty 0.374 against 0.318. One decision, after one observation, is
what GRPO's samples can resolve in a few hundred groups (a tiny model asked to pick two tools out of three learns
each tool's marginal appeal, not the pair).

../shared/cpu-preset-notes.md: an expert that copies a perfect tool leaves GRPO nothing to learn, and an
under-trained warm start gives it no valid answers to learn from. Two phases:

1. a copy drill (``copy_drill``): ~130-token sequences of one ordering line and the answer that copies it, which
   form the copying circuit in ~150 steps (on full ~1,000-token trajectories the answer loss sat at chance for
   900 steps);
2. the expert's full trajectories until a gate — the valid-answer rate of rollouts sampled at GRPO's temperature on
   held-out instances — is reached, not after a fixed number of steps.

Before PPR, the same expert on A / B questions (``choice_warm_start``): it answers with the option the preset's
``option_line`` puts first, beside option drills and rehearsal of the policy's own ranking trajectories, until a
gate on sampled answers that follow the line (docs/ppr.md, "The A / B fine-tune").
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from agenticrec.agent import AgentConfig, Rollout, build_prompt
from agenticrec.data import DEFAULT_CANDIDATES, Dataset, Instance
from agenticrec.engine import Engine
from agenticrec.policy import sft_loss
from agenticrec.tasks import LESS, MORE, PreferenceTask
from agenticrec.tokenizer import IM_END, tool_call_text, tool_response_ids
from agenticrec.tools import Toolbox, context_for

log = logging.getLogger("agenticrec.warmstart")


# The tools whose observation ends with a full ordering of the candidates (ordering_line, under the preset).
RANKING_TOOLS = ("candidates_analyze", "get_session_behavior", "get_similar_items", "get_similar_users")


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start on the scripted expert."""

    lr: float = 1e-3
    batch_size: int = 16
    drill_steps: int = 150  # copy-drill steps before the expert's trajectories (0: none)
    drill_batch_size: int = 32
    drill_candidates: tuple[int, ...] = (DEFAULT_CANDIDATES,)  # each drill sequence's line: one of these lengths
    max_steps: int = 1500  # an upper bound; the gate normally stops it earlier
    check_every: int = 25  # steps between gate checks
    gate_valid_rate: float = 0.95  # valid-answer rate required of rollouts SAMPLED as GRPO will sample them
    gate_instances: int = 64
    plan: tuple[str, ...] = ("get_session_behavior", "get_similar_users")  # the expert's ranking tools, in order
    further_call: float = 0.5  # the share of each batch's expert trajectories that consult the whole plan
    seed: int = 0


def ordering_line(criterion: str, scores: list[float]) -> str:
    """``Candidates by <criterion>, best first: 4, 1, ...``: every candidate number, by score (ties: lower number).
    The line the preset's ranking tools end with (``agenticrec.preset.PresetToolbox``) and the expert copies."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    return f"Candidates by {criterion}, best first: " + ", ".join(str(j + 1) for j in order)


def ordering_of(observation: str) -> list[int] | None:
    """The candidate numbers of an observation's ``ordering_line`` (its last line), or None when it has none
    (another tool, or an error observation)."""
    line = observation.rstrip().rsplit("\n", 1)[-1]
    if not line.startswith("Candidates by ") or ", best first: " not in line:
        return None
    return [int(n) for n in line.split(", best first: ", 1)[1].split(", ")]


def option_line(criterion: str, numbers: list[int], direction: str) -> str:
    """An A / B question's counterpart of ``ordering_line``: ``Options by <criterion>, MORE likely first:`` and, on
    the next line, ``{B}, {A}``: the two options (candidates 1 and 2 are A and B) in the order of the candidate
    ``numbers`` (an ordering, best first), reversed for LESS, so that the option to answer always comes first.

    Why the braces: ``{B`` is one token of the preset's BPE, the same token as in the answer ``\\boxed{B}``. With
    the letters written ``B, A`` (the token `` B``) a fine-tuned stage-1 policy still named the line's first option
    on only 0.50 of greedy A / B answers after 250 steps; with ``{B}, {A}`` the copy formed within 225-300 steps in
    each of three runs (docs/ppr.md)."""
    letters = ["AB"[n - 1] for n in numbers]
    if direction == LESS:
        letters.reverse()
    return f"Options by {criterion}, {direction} likely first:\n" + ", ".join("{%s}" % x for x in letters)


def first_option(observation: str) -> str | None:
    """The letter an observation's ``option_line`` puts first, or None when it ends with none."""
    lines = observation.rstrip().split("\n")
    if len(lines) < 2 or not lines[-2].startswith("Options by ") or not lines[-1].startswith("{"):
        return None
    return lines[-1].split(", ")[0].strip("{}")


def expert_trajectory(tokenizer, data: Dataset, toolbox: Toolbox, instance: Instance, cfg: AgentConfig,
                      rng: random.Random, plan: tuple[str, ...] = WarmStartConfig.plan,
                      further_call: float = WarmStartConfig.further_call) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one expert trajectory, built exactly as the rollout builds a policy's.

    The expert consults the enabled tools of ``plan`` in order: the first always, each next one with probability
    ``further_call`` (it stops at the first it skips), and answers with the top K of the LAST observation's
    ordering, copied verbatim (under the preset that line orders by every tool consulted so far); an A / B question
    (``PreferenceTask``) with the option its option line puts first (``first_option``). It knows the
    format and the tools; whether a further tool is worth consulting it decides by a coin, never by the instance:
    that is the headroom GRPO must find, and the coin lets GRPO's samples meet both choices.
    """
    calls = [name for name in plan if name in toolbox.names and name in RANKING_TOOLS]
    if not calls:
        raise ValueError(f"the expert's plan {list(plan)} needs one of the ranking tools {list(RANKING_TOOLS)}; "
                         f"enabled: {sorted(toolbox.names)}")
    taken = 1
    while taken < len(calls) and rng.random() < further_call:
        taken += 1
    calls = calls[:taken]
    ids = build_prompt(tokenizer, instance, data, toolbox, cfg)
    mask = [0] * len(ids)
    context, earlier = context_for(instance, data), ()
    for name in calls:
        arguments = {"item_title": f"h{len(instance.history)}"} if name == "get_similar_items" else {}
        thought = f"Then I will use {name}." if earlier else f"I will use {name}."  # each decision its own words
        turn = tokenizer.encode(f"<think>{thought}</think>\n" + tool_call_text(name, arguments),
                                add_special_tokens=False)
        observation = toolbox.call(name, arguments, context, earlier).text
        earlier += ((name, arguments),)
        forced = tool_response_ids(tokenizer, [observation])
        ids, mask = ids + turn + forced, mask + [1] * len(turn) + [0] * len(forced)
    if isinstance(instance, PreferenceTask):  # an A / B question: the option its option line puts first
        answer = first_option(observation)
    else:
        order = ordering_of(observation)
        answer = None if order is None else order[:min(cfg.answer_length, len(instance.candidates))]
    if answer is None:  # a cut observation (MAX_OBSERVATION_CHARS) or an error: nothing to copy
        raise ValueError(f"the expert's last observation ({calls[-1]}) does not end with the line it copies: "
                         f"{observation[-120:]!r}")
    turn = tokenizer.encode(expert_answer_text(answer), add_special_tokens=False)
    return ids + turn, mask + [1] * len(turn)


def copy_drill(tokenizer, rng: random.Random, num_candidates: int = 20, k: int = 10) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a short drill: a ranking tool's last observation line (a random order) and the answer
    turn that copies its top K, rendered exactly as in a trajectory.

    Why: copying a list from ~1,000 tokens back is a two-step circuit that a tiny model finds only after a long
    plateau (the answer loss sat at chance for 900 full-trajectory steps). On ~130-token drills it forms within
    ~200 steps, and since RoPE attention depends on relative positions only, the circuit carries over unchanged to
    full trajectories, where the same observation-to-answer distance recurs.
    """
    order = list(range(1, num_candidates + 1))
    rng.shuffle(order)
    scores = [0.0] * num_candidates
    for rank, number in enumerate(order):
        scores[number - 1] = -rank
    criteria = ["popularity", "co-occurrence with the history", "similarity", "similar users' taste"]
    criterion = ", then ".join(rng.sample(criteria, rng.choice([1, 1, 2])))
    forced = tool_response_ids(tokenizer, [ordering_line(criterion, scores)])
    turn = tokenizer.encode(expert_answer_text(order[:k]), add_special_tokens=False)
    return forced + turn, [0] * len(forced) + [1] * len(turn)


def expert_answer_text(answer: list[int] | str) -> str:
    """The expert's answer turn: a ranking (``[4, 1, ...]``) or an A / B choice (``B``) in the agent's format."""
    return f"<think>I follow the last ranking.</think>\n<answer>\\boxed{{{answer}}}</answer>{IM_END}"


def valid_rate(model, tokenizer, data, toolbox, instances, cfg: AgentConfig, seed: int = 0) -> tuple[float, dict]:
    """Valid-answer rate of rollouts on ``instances`` at ``cfg.temperature`` (seeded; 0 = greedy), and the count of
    each invalid reason."""
    trajectories = _gate_rollouts(model, tokenizer, data, toolbox, instances, cfg, seed)
    reasons = Counter(t.invalid_reason for t in trajectories if t.invalid_reason)
    return float(np.mean([t.invalid_reason is None for t in trajectories])), dict(reasons)


def _gate_rollouts(model, tokenizer, data, toolbox, instances, cfg: AgentConfig, seed: int):
    """Rollouts of ``instances`` at ``cfg.temperature`` (seeded) with the model in eval mode, then back to training."""
    model.eval()
    trajectories = Rollout(Engine(model, cfg.max_context), tokenizer, data, toolbox, cfg).run(instances, seed=seed)
    model.train()
    return trajectories


def gate_check(model, tokenizer, data, toolbox, gate: list[Instance], cfg: AgentConfig,
               threshold: float) -> tuple[float, dict]:
    """``valid_rate`` on ``gate``, its first quarter sampled first: when that quarter alone has more invalid answers
    than the whole gate tolerates, the gate cannot pass and the rest is not sampled (the rate returned is then the
    quarter's). The checks before the warm start is ready fail this way at a quarter of the cost."""
    tolerated = int(len(gate) * (1 - threshold) + 1e-9)
    head = max(1, len(gate) // 4)
    rate, reasons = valid_rate(model, tokenizer, data, toolbox, gate[:head], cfg)
    if sum(reasons.values()) > tolerated or head == len(gate):
        return rate, reasons
    invalid = Counter(reasons) + Counter(valid_rate(model, tokenizer, data, toolbox, gate[head:], cfg)[1])
    return 1 - sum(invalid.values()) / len(gate), dict(invalid)


def warm_start(model, tokenizer, data: Dataset, toolbox: Toolbox, train: list[Instance], gate: list[Instance],
               agent_cfg: AgentConfig, cfg: WarmStartConfig = WarmStartConfig()) -> dict:
    """Train ``model`` in place: the copy drill, then the expert's trajectories until the sampled valid-answer rate
    on ``gate`` reaches the threshold (or ``max_steps``)."""
    rng, device = random.Random(cfg.seed), next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    start, history, rate = time.perf_counter(), [], 0.0
    for step in tqdm(range(1, cfg.drill_steps + 1), desc="warm start: copy drill", leave=False):
        drills = [copy_drill(tokenizer, rng, _drill_size(cfg.drill_candidates, rng))
                  for _ in range(cfg.drill_batch_size)]
        loss = sft_step(model, optimizer, [drills], device)
    if cfg.drill_steps:
        history.append({"drill_steps": cfg.drill_steps, "loss": loss})
        log.info("warm start: copy drill done, %d steps, loss %.3f", cfg.drill_steps, loss)
    bar = tqdm(range(1, cfg.max_steps + 1), desc="warm start: expert", leave=False)
    for step in bar:
        tasks = [rng.choice(train) for _ in range(cfg.batch_size)]
        batch = expert_trajectories(tokenizer, data, toolbox, tasks, agent_cfg, rng, cfg.plan, cfg.further_call)
        loss = sft_step(model, optimizer, [batch], device)
        if step % cfg.check_every == 0:
            rate, reasons = gate_check(model, tokenizer, data, toolbox, gate[:cfg.gate_instances], agent_cfg,
                                       cfg.gate_valid_rate)
            history.append({"step": step, "loss": loss, "valid_rate": rate, "invalid": reasons})
            log.info("warm start step %d: loss %.3f, valid rate %.2f at T=%g, invalid %s", step, loss, rate,
                     agent_cfg.temperature, reasons)
            bar.set_postfix(loss=f"{loss:.3f}", valid=f"{rate:.2f}")
            if rate >= cfg.gate_valid_rate:
                break
    model.eval()
    return {"steps": step, "drill_steps": cfg.drill_steps, "valid_rate": rate,
            "passed_gate": rate >= cfg.gate_valid_rate, "seconds": time.perf_counter() - start, "history": history}


def _drill_size(sizes: tuple[int, ...], rng: random.Random) -> int:
    """One drill's number of candidates: the only size, or one drawn (a single size draws nothing, so the default
    drill's random stream is that of a drill over 20 numbers alone)."""
    return sizes[0] if len(sizes) == 1 else rng.choice(sizes)


def expert_trajectories(tokenizer, data: Dataset, toolbox: Toolbox, tasks: list, agent_cfg: AgentConfig,
                        rng: random.Random, plan: tuple[str, ...], further_call: float) -> list[tuple[list, list]]:
    """The expert's trajectories of ``tasks``, its further tool calls decided by ``stratified_coins`` (exactly
    ``further_call`` of the batch consults the next tool, in random places)."""
    coins = stratified_coins(len(tasks), further_call, rng)
    return [expert_trajectory(tokenizer, data, toolbox, task, agent_cfg, rng, plan, coin)
            for task, coin in zip(tasks, coins)]


def stratified_coins(n: int, p: float, rng: random.Random) -> list[float]:
    """The ``further_call`` of each of a batch's n expert trajectories: 1.0 (consult the whole plan) for exactly
    round(p n) of them, in random places, 0.0 for the others. What the tiny model learns as its probability of a
    further call follows the share in its last batches, and with an independent coin per trajectory that share has
    a standard deviation of 0.1 in a batch of 20: in three warm starts at p = 0.3 (other seeds and batch contents)
    the share sampled at GRPO's first step came out 0.15, 0.28 and 0.03, where 0.19 was expected."""
    coins = [1.0] * round(p * n) + [0.0] * (n - round(p * n))
    rng.shuffle(coins)
    return coins


def token_mean_nll(model, parts: list[list[tuple[list[int], list[int]]]], device) -> torch.Tensor:
    """``sft_loss`` of the parts' sequences together: the mean NLL of every mask-1 token. Each part is padded on its
    own and weighted by its number of loss tokens (sft_loss scores mask[1:]), so short drills cost their own length,
    not that of the longest trajectory. One part: sft_loss itself."""
    parts = [part for part in parts if part]
    if len(parts) == 1:
        return sft_loss(model, parts[0], device)
    counts = [sum(sum(mask[1:]) for _, mask in part) for part in parts]
    return sum(sft_loss(model, part, device) * n for part, n in zip(parts, counts)) / sum(counts)


def sft_step(model, optimizer, parts, device) -> float:
    """One optimiser step on ``token_mean_nll`` of ``parts``, the gradient norm clipped at 1; returns the loss."""
    loss = token_mean_nll(model, parts, device)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


# ------------------------------------------------------------------------------------------------------------------
# The A / B fine-tune before PPR (the preset's stage 2 with the paper's grpo objective)
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceStartConfig:
    """Supervised fine-tune of the stage-1 policy on A / B questions, before PPR: the stage-1 policy never saw one
    (its warm start has none), so the paper's objective would meet groups with no valid answers to learn from."""

    lr: float = 3e-4
    expert_batch: int = 8  # the expert's A / B trajectories per step
    drill_batch: int = 16  # option drills per step (option_drill)
    replay_batch: int = 8  # the stage-1 policy's own ranking trajectories per step (rehearsal)
    max_steps: int = 400  # an upper bound; the gate normally stops it earlier
    first_check: int = 150  # no gate check before this step (measured: the copy of the letter forms at ~225)
    check_every: int = 25
    gate_follow_rate: float = 0.95  # share of SAMPLED A / B answers that are valid and name the line's first option
    gate_instances: int = 64
    seed: int = 0


OPTION_CRITERIA = ("co-occurrence with the history", "similar users' taste",
                   "co-occurrence with the history, then similar users' taste")


def option_drill(tokenizer, rng: random.Random) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a short drill: an ``option_line`` alone as a tool response, and the answer turn naming
    its first option; ``copy_drill``'s counterpart for A / B answers."""
    numbers = [1, 2]
    rng.shuffle(numbers)
    line = option_line(rng.choice(OPTION_CRITERIA), numbers, rng.choice((MORE, LESS)))
    forced = tool_response_ids(tokenizer, [line])
    turn = tokenizer.encode(expert_answer_text(first_option(line)), add_special_tokens=False)
    return forced + turn, [0] * len(forced) + [1] * len(turn)


def choice_task(instance: Instance, rng: random.Random) -> PreferenceTask:
    """An A / B question on a ranking instance: its target against a uniform other candidate, in random order, MORE
    or LESS at random (the correct option: the target for MORE, the other for LESS). The fine-tune's questions: it
    teaches the format, not which option is right, so the negative is not mined."""
    negative = rng.choice([c for c in instance.candidates if c != instance.target])
    options = [instance.target, negative]
    rng.shuffle(options)
    direction = rng.choice((MORE, LESS))
    return PreferenceTask(instance.user, list(instance.history), instance.target if direction == MORE else negative,
                          options, instance.position, instance.split, direction)


def follow_rate(model, tokenizer, data, toolbox, tasks: list[PreferenceTask], cfg: AgentConfig,
                seed: int = 0) -> tuple[float, dict]:
    """The share of A / B rollouts sampled at ``cfg.temperature`` whose answer is valid and names the option the last
    observation's ``option_line`` puts first, and the count of each way the others failed."""
    trajectories = _gate_rollouts(model, tokenizer, data, toolbox, tasks, cfg, seed)
    failed = Counter(reason for reason in map(follow_failure, trajectories) if reason)
    return 1 - sum(failed.values()) / max(1, len(trajectories)), dict(failed)


def follow_failure(trajectory) -> str | None:
    """None when an A / B trajectory's answer is valid and names the option its last observation's ``option_line``
    puts first; else why not: the invalid reason, ``no_option_line`` or ``other_option``."""
    if trajectory.invalid_reason:
        return trajectory.invalid_reason
    line_first = first_option(trajectory.tool_calls[-1].observation) if trajectory.tool_calls else None
    if line_first is None:
        return "no_option_line"
    answered = "AB"[trajectory.instance.candidates.index(trajectory.ranking[0])]
    return None if answered == line_first else "other_option"


def choice_warm_start(model, tokenizer, data: Dataset, toolbox: Toolbox, train: list[Instance],
                      gate: list[PreferenceTask], replay: list[tuple[list[int], list[int]]], agent_cfg: AgentConfig,
                      cfg: ChoiceStartConfig = ChoiceStartConfig()) -> dict:
    """Train ``model`` in place on the expert's A / B trajectories (``expert_trajectory`` on ``choice_task``s of
    ``train``: the plan's tools, the second in half of them, then the option line's first option), option drills and
    ``replay`` (rehearsal of the ranking), until ``follow_rate`` on ``gate`` reaches the threshold (or
    ``max_steps``). Without rehearsal the ranking's format is overwritten (docs/ppr.md)."""
    rng, device = random.Random(cfg.seed), next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    start, history, rate = time.perf_counter(), [], 0.0
    bar = tqdm(range(1, cfg.max_steps + 1), desc="A / B fine-tune", leave=False)
    for step in bar:
        tasks = [choice_task(rng.choice(train), rng) for _ in range(cfg.expert_batch)]
        experts = expert_trajectories(tokenizer, data, toolbox, tasks, agent_cfg, rng, WarmStartConfig.plan,
                                      WarmStartConfig.further_call)
        rehearsed = rng.sample(replay, min(len(replay), cfg.replay_batch))
        drills = [option_drill(tokenizer, rng) for _ in range(cfg.drill_batch)]
        loss = sft_step(model, optimizer, [experts, rehearsed, drills], device)
        if step >= cfg.first_check and step % cfg.check_every == 0:
            rate, failed = follow_rate(model, tokenizer, data, toolbox, gate[:cfg.gate_instances], agent_cfg, step)
            history.append({"step": step, "loss": loss, "follow_rate": rate, "failed": failed})
            log.info("A / B fine-tune step %d: loss %.3f, follow rate %.2f at T=%g, failed %s", step, loss, rate,
                     agent_cfg.temperature, failed)
            bar.set_postfix(loss=f"{loss:.3f}", follow=f"{rate:.2f}")
            if rate >= cfg.gate_follow_rate:
                break
    model.eval()
    return {"steps": step, "follow_rate": rate, "passed_gate": rate >= cfg.gate_follow_rate,
            "seconds": time.perf_counter() - start, "history": history}
