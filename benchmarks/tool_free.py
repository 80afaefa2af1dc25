"""What the reasoning-only column of the ablation can show under the CPU preset.

    python benchmarks/tool_free.py [--checkpoint runs/grpo/final] [--steps 150] [--grpo-steps 40]
                                   [--answer prompt|title-overlap|popularity-first] [--limit 300]

The preset's warm start never saw a tool-free trajectory, so with tools disabled its policies answer nothing valid
(docs/results.md, the ablation). This script asks what one would gain by teaching them: it fine-tunes the frozen
policy (the checkpoint's warm start) and the trained one alike, in memory, on tool-free trajectories whose answer
is the first 10 candidates in the prompt's order (a ranking the model writes validly with no line to copy;
taught the whole popularity order instead, it repeated numbers), with rehearsal of the policy's own greedy ranking
trajectories, and prints both policies' greedy rows without and with tools before and after, beside the prompt
order itself scored without a model. Any answer that does not read the candidates scores 1/N H@1 in expectation
(the candidates are shuffled, ``agenticrec.data.build_instances``), so the fine-tuned rows show whether "trained >
frozen, reasoning only" can hold for a policy that learns about items only from its tools.

The reasoning-only prompt does carry evidence for a reader of titles: the candidates ordered by the words their
titles share with the history's (``title_overlap_order``) are scored beside the prompt order, and ``--answer
title-overlap`` makes the fine-tune teach that order instead, which shows whether the preset's model learns to read it.
A prior over items, which a reader could memorise title by title, is evidence too: the most popular candidate first
(``popularity_first``) is scored beside them, and ``--answer popularity-first`` teaches it.

The paper's "trained, reasoning only" may also be read as a policy trained by GRPO without tools. So the fine-tuned
frozen policy then runs the checkpoint's own stage-1 GRPO (its train_config.json settings) with tools disabled for
``--grpo-steps`` steps, and its rows are printed too, with the distinct answers per group that GRPO's advantages
need. Nothing is saved. ~6 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
from types import SimpleNamespace

import torch

from agenticrec import distributed as D
from agenticrec import preset
from agenticrec.agent import AgentConfig, Rollout, build_prompt
from agenticrec.baselines import popularity
from agenticrec.checkpoint import read_train_config
from agenticrec.data import load_dataset, split_instances
from agenticrec.engine import Engine
from agenticrec.evaluation import agent_statistics, agent_table, metric_cis, paired_table, quality_table, run_agent
from agenticrec.model import load_pretrained
from agenticrec.tokenizer import load_tokenizer
from agenticrec.trainer import (DataStream, Objective, Sampling, agent_config, collect_groups, frozen_copy,
                                make_toolbox, rehearsal_data, update, warmup_schedule)
from agenticrec.warmstart import expert_answer_text, sft_step

GRPO_FREE = "frozen + tool-free fine-tune + GRPO without tools"
REHEARSAL_INSTANCES = 256  # train instances whose greedy ranking trajectories are rehearsed (the A / B fine-tune's)


def prompt_order(prompts, instance) -> list[int]:
    """Candidate numbers (1-based) in the prompt's order: a ranking that reads nothing."""
    return list(range(1, len(instance.candidates) + 1))


def title_words(title: str) -> set[str]:
    """The words of a title: lower-cased runs of letters and digits, three or more characters long."""
    return {word for word in re.findall(r"[a-z0-9]+", title.lower()) if len(word) >= 3}


def title_overlap_order(prompts, instance) -> list[int]:
    """Candidate numbers (1-based), those sharing the most words with the history's titles first, ties in the
    prompt's order; titles as the prompt shows them (``prompts.title``). Evidence the reasoning-only prompt carries
    for a reader of titles, with no knowledge of items."""
    seen = set().union(*(title_words(prompts.title(item)) for item in instance.history))
    shared = [len(title_words(prompts.title(item)) & seen) for item in instance.candidates]
    return sorted(prompt_order(prompts, instance), key=lambda number: -shared[number - 1])


def popularity_first(counts):
    """An answer from a prior over items, given ``counts`` [num_items] (``baselines.popularity``): the candidate with
    the most train interactions first (the earliest among equals), the rest in the prompt's order. What a reader of
    the prompt could memorise item by item from titles, as a language model brings such priors from pretraining."""
    def answer(prompts, instance) -> list[int]:
        order = prompt_order(prompts, instance)
        top = max(order, key=lambda number: counts[instance.candidates[number - 1]])
        return [top] + [number for number in order if number != top]
    return answer


ANSWERS = {  # --answer: (its label in the tables, the answer given the dataset)
    "prompt": ("prompt order", lambda data: prompt_order),
    "title-overlap": ("title overlap", lambda data: title_overlap_order),
    "popularity-first": ("popularity first", lambda data: popularity_first(popularity(data)))}


def answer_ranks(prompts, instances, answer, k: int) -> list[int | None]:
    """The target's rank when the answer is the first ``k`` of ``answer(prompts, instance)`` (None beyond them)."""
    ranks = []
    for x in instances:
        rank = answer(prompts, x).index(x.candidates.index(x.target) + 1) + 1
        ranks.append(rank if rank <= k else None)
    return ranks


def tool_free_trajectory(tokenizer, prompts, toolbox, instance, cfg: AgentConfig,
                         answer=prompt_order) -> tuple[list[int], list[int]]:
    """(ids, loss mask): the reasoning-only prompt (``cfg`` with tools disabled) and an answer listing the first
    ``cfg.answer_length`` candidates of ``answer(prompts, instance)``."""
    ids = build_prompt(tokenizer, instance, prompts, toolbox, dataclasses.replace(cfg, use_tools=False))
    first = answer(prompts, instance)[:cfg.answer_length]
    turn = tokenizer.encode(expert_answer_text(first), add_special_tokens=False)
    return ids + turn, [0] * len(ids) + [1] * len(turn)


def rows_of(model, tokenizer, prompts, toolbox, instances, cfg: AgentConfig, label: str) -> dict[str, dict]:
    """{"<label>, reasoning only" / "<label>, with tools": row}: greedy rollouts' metrics and agent statistics."""
    rows = {}
    for use_tools, mode in ((False, "reasoning only"), (True, "with tools")):
        rollout = Rollout(Engine(model, cfg.max_context), tokenizer, prompts, toolbox,
                          dataclasses.replace(cfg, use_tools=use_tools))
        trajectories, seconds = run_agent(rollout, instances, chunk=150)
        ranks = [t.rank for t in trajectories]
        rows[f"{label}, {mode}"] = {"metrics": metric_cis(ranks), "ranks": ranks,
                                    "agent": agent_statistics(trajectories, seconds)}
    return rows


def fine_tune(model, tokenizer, prompts, toolbox, train, cfg: AgentConfig, steps: int, seed: int,
              answer=prompt_order) -> None:
    """In place: ``steps`` steps of 8 tool-free trajectories answering ``answer`` and 8 rehearsed ranking
    trajectories, lr 3e-4 (the A / B fine-tune's settings, ``warmstart.ChoiceStartConfig``)."""
    rollout = Rollout(Engine(model, cfg.max_context), tokenizer, prompts, toolbox, cfg)
    replay = rehearsal_data(rollout, train[:REHEARSAL_INSTANCES], cap=128)
    rng, pool = random.Random(seed), train[REHEARSAL_INSTANCES:]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    model.train()
    for step in range(1, steps + 1):
        free = [tool_free_trajectory(tokenizer, prompts, toolbox, rng.choice(pool), cfg, answer) for _ in range(8)]
        loss = sft_step(model, optimizer, [free, rng.sample(replay, min(8, len(replay)))], torch.device("cpu"))
        if step % 50 == 0 or step == steps:
            print(f"  step {step}: loss {loss:.4f}", flush=True)
    model.eval()


def without_tools(settings: dict) -> SimpleNamespace:
    """A checkpoint's saved stage-1 settings with tools disabled: what ``Sampling.of``, ``Objective.of`` and
    ``agent_config`` read, for the same GRPO on reasoning-only rollouts."""
    return SimpleNamespace(**{**settings, "tools": "none"})


def grpo_without_tools(model, tokenizer, prompts, toolbox, train, settings: dict, steps: int) -> None:
    """In place: ``steps`` steps of the checkpoint's own stage-1 GRPO (its batch, G, lr, warm-up, temperature, KL to
    ``model`` as it starts) on reasoning-only rollouts of ``train``; prints every 10th step's mean reward, valid rate,
    distinct answers per group (1 = no advantage to learn from) and dropped groups."""
    run, info = without_tools(settings), D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    rollout = Rollout(Engine(model, run.max_context), tokenizer, prompts, toolbox, agent_config(run))
    ref_model = frozen_copy(model) if run.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    scheduler = warmup_schedule(optimizer, run.warmup_steps)
    stream, sampling, objective = DataStream(train, run.seed, info), Sampling.of(run, info), Objective.of(run)
    for step in range(steps):
        batch = collect_groups(rollout, stream, sampling, step, info)
        update(model, ref_model, optimizer, batch, objective, info)
        scheduler.step()
        if (step + 1) % 10 == 0 or step + 1 == steps:
            rollouts = batch.trajectories
            distinct = statistics.mean(len({tuple(t.ids[t.prompt_len:]) for t in g}) for g in batch.groups)
            print(f"  GRPO step {step + 1}: reward {statistics.mean(t.reward for t in rollouts):+.3f}, valid "
                  f"{statistics.mean(t.invalid_reason is None for t in rollouts):.2f}, distinct answers per group "
                  f"{distinct:.2f} of {sampling.group_size}, dropped groups {batch.dropped}", flush=True)


def answer_row(prompts, instances, answer, k: int) -> dict:
    """A table row for ``answer`` scored without a model: its first ``k`` candidates' metrics and ranks."""
    ranks = answer_ranks(prompts, instances, answer, k)
    return {"metrics": metric_cis(ranks), "ranks": ranks}


def print_tables(before: dict, after: dict, reference: dict, grpo: bool) -> None:
    """Every row's quality and agent statistics, then the paired differences the ablation asks about: after the
    fine-tune, and (``grpo``) GRPO without tools against its start."""
    print(quality_table({**before, **after, **{f"{label}, first 10 (no model)": row
                                               for label, row in reference.items()}}) + "\n")
    print(agent_table({**before, **after}) + "\n")
    tuned = {"trained, reasoning only": after["trained + tool-free fine-tune, reasoning only"],
             "frozen, reasoning only": after["frozen + tool-free fine-tune, reasoning only"],
             "trained, with tools": after["trained + tool-free fine-tune, with tools"], **reference}
    print("after the fine-tune:\n" + paired_table(tuned))
    if grpo:
        print("\nGRPO without tools (the paper's \"trained, reasoning only\" read as trained without tools):\n" +
              paired_table({"frozen + GRPO without tools, reasoning only": after[f"{GRPO_FREE}, reasoning only"],
                            "frozen, reasoning only": tuned["frozen, reasoning only"]}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/grpo/final", help="a preset checkpoint (train_grpo.py's final)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps per policy")
    p.add_argument("--grpo-steps", type=int, default=40,
                   help="steps of stage-1 GRPO without tools from the fine-tuned frozen policy (0: none)")
    p.add_argument("--answer", choices=ANSWERS, default="prompt",
                   help="the tool-free answer the fine-tune teaches: the prompt's order, the candidates by words "
                        "shared with the history's titles (title_overlap_order), or the most popular candidate "
                        "first (popularity_first)")
    p.add_argument("--limit", type=int, default=300, help="first N instances of --split")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    saved = read_train_config(args.checkpoint)
    if not saved or saved.get("preset") is None:
        raise SystemExit(f"error: {args.checkpoint} is not a preset checkpoint (its train_config.json records no "
                         f"preset layer): the question is the preset's")
    layer, settings = saved["preset"], saved["config"]
    frozen = preset.warm_start_folder(layer, args.checkpoint)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    info = D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    data = load_dataset(settings["dataset"])
    prompts = preset.prompt_data(data, layer)
    toolbox = make_toolbox(data, settings["tools"], preset.toolbox_class(layer), info, preset.sasrec_train(layer))
    cfg = AgentConfig(max_tool_calls=settings["max_tool_calls"], max_turn_tokens=settings["max_turn_tokens"],
                      max_context=settings["max_context"], temperature=0.0)
    instances = split_instances(data, args.split)[:args.limit]
    train = split_instances(data, "train")
    tokenizer = load_tokenizer(args.checkpoint)  # a preset run's warm start is saved without it: they share it
    answers = {name: (label, make(data)) for name, (label, make) in ANSWERS.items()}
    before, after = {}, {}
    for label, folder in (("frozen", frozen), ("trained", args.checkpoint)):
        model = load_pretrained(str(folder), dtype=torch.float32)
        before.update(rows_of(model, tokenizer, prompts, toolbox, instances, cfg, label))
        print(f"{label} ({folder}): fine-tuning on tool-free answers, {args.answer} order", flush=True)
        fine_tune(model, tokenizer, prompts, toolbox, train, cfg, args.steps, args.seed, answers[args.answer][1])
        after.update(rows_of(model, tokenizer, prompts, toolbox, instances, cfg, f"{label} + tool-free fine-tune"))
        if label == "frozen" and args.grpo_steps:
            print(f"frozen + tool-free fine-tune: {args.grpo_steps} steps of its GRPO without tools", flush=True)
            grpo_without_tools(model, tokenizer, prompts, toolbox, train, settings, args.grpo_steps)
            after.update(rows_of(model, tokenizer, prompts, toolbox, instances, cfg, GRPO_FREE))
    reference = {label: answer_row(prompts, instances, answer, cfg.answer_length) for label, answer in answers.values()}
    print(f"\n{settings['dataset']}, {args.split}, first {len(instances)} instances, greedy; 95% bootstrap CIs\n")
    print_tables(before, after, reference, grpo=args.grpo_steps > 0)


if __name__ == "__main__":
    main()
