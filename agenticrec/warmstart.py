"""The CPU preset's warm start: supervised learning on a deliberately imperfect scripted expert.

Not in the paper. The paper starts GRPO from Qwen3-4B-Instruct, a model that already knows the chat format, can
call tools and can rank a little. No such model can be downloaded here, so the CPU preset manufactures one: a tiny
Qwen3 is trained to imitate an expert that

- knows the format: thinks briefly, calls ``candidates_analyze`` and often ``get_similar_items`` (on ``h<k>``, the
  latest history item), answers with K distinct numbers;
- uses the evidence poorly: it ranks the candidates by POPULARITY, copied from ``candidates_analyze``'s
  observation (NDCG@10 ~0.51 on Games), and only rarely lets ``get_similar_items`` (SASRec's collaborative
  evidence, a ranker worth ~0.64) reorder them.

That gap is the headroom GRPO must find: call the informative tools and let their output reorder the answer
(../shared/cpu-preset-notes.md: an expert that copies a perfect tool leaves GRPO nothing to learn, and an
under-trained warm start gives it no valid answers to learn from). Training stops on a gate — the greedy
valid-answer rate on held-out instances — not after a fixed number of steps.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from agenticrec.agent import AgentConfig, Rollout, build_prompt
from agenticrec.data import Dataset, Instance
from agenticrec.engine import Engine
from agenticrec.tokenizer import IM_END, tool_call_text, tool_response_ids
from agenticrec.tools import Toolbox, context_for

log = logging.getLogger("agenticrec.warmstart")


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start on the scripted expert."""

    lr: float = 3e-3
    batch_size: int = 16
    max_steps: int = 1500  # an upper bound; the gate normally stops it earlier
    check_every: int = 50  # steps between gate checks
    gate_valid_rate: float = 0.9  # greedy valid-answer rate required on the gate instances
    gate_instances: int = 32
    evidence_use: float = 0.2  # how often the expert lets get_similar_items reorder its answer
    seed: int = 0


def expert_trajectory(tokenizer, data: Dataset, toolbox: Toolbox, instance: Instance, cfg: AgentConfig,
                      rng: random.Random, evidence_use: float = 0.2) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one expert trajectory, built exactly as the rollout builds a policy's.

    The expert always calls ``candidates_analyze`` (whose observation lists the candidates most popular first),
    calls ``get_similar_items`` on the latest history item half of the time, and answers with the popularity
    order copied from the first observation. Only with probability ``evidence_use`` does it put the similar
    candidates first: the skill exists in the data, rarely used, for GRPO to amplify.
    """
    ids = build_prompt(tokenizer, instance, data, toolbox, cfg)
    mask = [0] * len(ids)
    context = context_for(instance, data)
    calls = [("candidates_analyze", {})]
    if "get_similar_items" in toolbox.names and rng.random() < 0.5:
        calls.append(("get_similar_items", {"item_title": f"h{len(instance.history)}"}))
    observations = {}
    for name, arguments in calls:
        turn = tokenizer.encode(f"<think>I will use {name}.</think>\n" + tool_call_text(name, arguments),
                                add_special_tokens=False)
        observations[name] = toolbox.call(name, arguments, context).text
        forced = tool_response_ids(tokenizer, [observations[name]])
        ids, mask = ids + turn + forced, mask + [1] * len(turn) + [0] * len(forced)
    order = _listed(observations["candidates_analyze"], "By popularity, most popular first:")
    reason = "popularity"
    if "get_similar_items" in observations and rng.random() < evidence_use:
        similar = _listed(observations["get_similar_items"], "Most similar candidates:")
        order, reason = similar + [n for n in order if n not in similar], "similarity, then popularity"
    k = min(cfg.answer_length, len(instance.candidates))
    turn = tokenizer.encode(f"<think>I rank by {reason}.</think>\n<answer>\\boxed{{{order[:k]}}}</answer>{IM_END}",
                            add_special_tokens=False)
    return ids + turn, mask + [1] * len(turn)


def _listed(observation: str, label: str) -> list[int]:
    """The comma-separated candidate numbers that follow ``label`` on its line of an observation."""
    line = observation.split(label, 1)[1].split("\n", 1)[0].split("(", 1)[0]
    return [int(n) for n in re.findall(r"\d+", line)]


def sft_loss(model, batch: list[tuple[list[int], list[int]]], device) -> torch.Tensor:
    """Mean negative log-likelihood of the expert's own tokens (mask 1), teacher-forced."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch], device=device)
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], device=device, dtype=torch.float)
    logp = model(ids[:, :-1], targets=ids[:, 1:], target_mask=mask[:, 1:] > 0)  # LM head on sampled tokens only
    return -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()


def valid_rate(model, tokenizer, data, toolbox, instances, cfg: AgentConfig) -> tuple[float, dict]:
    """Greedy valid-answer rate on ``instances`` and the count of each invalid reason."""
    greedy = dataclasses.replace(cfg, temperature=0.0)
    model.eval()
    trajectories = Rollout(Engine(model, greedy.max_context), tokenizer, data, toolbox, greedy).run(instances)
    model.train()
    reasons = Counter(t.invalid_reason for t in trajectories if t.invalid_reason)
    return float(np.mean([t.invalid_reason is None for t in trajectories])), dict(reasons)


def warm_start(model, tokenizer, data: Dataset, toolbox: Toolbox, train: list[Instance], gate: list[Instance],
               agent_cfg: AgentConfig, cfg: WarmStartConfig = WarmStartConfig()) -> dict:
    """Train ``model`` in place until the greedy valid-answer rate on ``gate`` reaches the threshold."""
    rng, device = random.Random(cfg.seed), next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    start, history, rate = time.perf_counter(), [], 0.0
    for step in range(1, cfg.max_steps + 1):
        batch = [expert_trajectory(tokenizer, data, toolbox, rng.choice(train), agent_cfg, rng, cfg.evidence_use)
                 for _ in range(cfg.batch_size)]
        loss = sft_loss(model, batch, device)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % cfg.check_every == 0:
            rate, reasons = valid_rate(model, tokenizer, data, toolbox, gate[:cfg.gate_instances], agent_cfg)
            history.append({"step": step, "loss": loss.item(), "valid_rate": rate, "invalid": reasons})
            log.info("warm start step %d: loss %.3f, greedy valid rate %.2f, invalid %s", step, loss.item(), rate,
                     reasons)
            if rate >= cfg.gate_valid_rate:
                break
    model.eval()
    return {"steps": step, "valid_rate": rate, "passed_gate": rate >= cfg.gate_valid_rate,
            "seconds": time.perf_counter() - start, "history": history}
