"""Evaluate a checkpoint and the baselines on fixed instances: the paper's tables with bootstrap CIs, plus validity,
tool use, tokens and latency (docs/evaluation.md).

    python evaluate.py --checkpoint runs/grpo/final --split test --baselines       # Table 1 layout
    python evaluate.py --checkpoint runs/grpo/final --table ablation               # Table 2: frozen/trained x tools
    python evaluate.py --checkpoint runs/grpo/final --table tools                  # each tool disabled in turn
    python evaluate.py --checkpoint runs/grpo/final --table scaling --limit 500    # N = 20, 50, 100 (+ two-stage)
    python evaluate.py --checkpoint runs/grpo/final --limit 20 --show 2 --html out.html

Conventions: the agent decodes greedily, one engine call per --chunk instances (fewer when --kv-budget holds fewer
rows); a checkpoint's train_config.json (written by train_grpo.py / train_ppr.py) supplies the agent settings it
was trained with (tools, budgets, context) and its preset layer, if any, which flags override and the log lists;
the "frozen" policy is the untrained start (--frozen DIR; for a preset checkpoint its warm start). Every metric is
a mean over instances with a 95% percentile bootstrap CI (10,000 resamples).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agenticrec import preset
from agenticrec.agent import Rollout
from agenticrec.baselines import cooccurrence_scorer, popularity_scorer, random_scorer
from agenticrec.checkpoint import CHECKPOINT_SETTINGS, read_train_config
from agenticrec.cli import option, parse_flags
from agenticrec.data import load_dataset, split_instances
from agenticrec.engine import Engine
from agenticrec.evaluation import (agent_statistics, agent_table, metric_cis, paired_table, quality_table, render_html,
                                   render_text, run_agent, scorer_ranks, shortlist, shortlist_recall)
from agenticrec.model import load_pretrained
from agenticrec.profiles import load_profiles
from agenticrec.sasrec import score_candidates
from agenticrec.tokenizer import load_tokenizer
from agenticrec.trainer import CPU_KV_BUDGET_GB, agent_config, make_toolbox, rows_per_call

log = logging.getLogger("evaluate")
TABLES = ("main", "ablation", "tools", "scaling")


@dataclass
class Config:
    checkpoint: str = option(
        "", "a model folder with its tokenizer (train_grpo / train_ppr out/final); empty: baselines only")
    dataset: str = option("games", "a dataset under data/")
    split: str = option("test", "test | valid | train")
    candidates: int = option(20, "N candidates per instance; N != 20 is built with the same protocol (seeded)")
    limit: int = option(0, "evaluate the first N instances (0 = all)")
    table: str = option("main", "main | ablation (frozen/trained x tools) | tools (each disabled) | scaling (N sizes)")
    disable_tool: str = option("", "comma-separated tools to leave out of the agent's toolbox")
    baselines: bool = option(
        False, "add random, popularity, co-occurrence, SASRec and the frozen policy with / without tools")
    frozen: str = option("", "the untrained policy's folder; default for a preset checkpoint: its warm start")
    scaling: str = option("20,50,100", "candidate-set sizes of --table scaling")
    shortlist: int = option(20, "two-stage mode for N > this: SASRec keeps this many candidates, the agent ranks them")
    tools: str = option("all", 'tools the agent may call: "all", a comma list, or "none" (reasoning only)')
    max_tool_calls: int = option(10, "T_max")
    max_turn_tokens: int = option(512, "tokens per turn")
    max_context: int = option(6144, "tokens per trajectory")
    profiles: str = option("", "the LLM profile cache get_user_profile serves; default: the checkpoint's run's")
    chunk: int = option(250, "at most this many instances per engine call")
    kv_budget: float = option(CPU_KV_BUDGET_GB, "GB of KV cache one engine call may take (rows are allocated at "
                                                "--max-context): calls hold at most that many rows")
    decode: str = option("dynamic", "the engine's decode step: dynamic | static | compiled (docs/engine.md)")
    show: int = option(0, "print this many complete trajectories of the first agent row")
    html: str = option("", "write those trajectories (at least 10) as one self-contained HTML page here")
    json: str = option("", "write every number here")
    plots: str = option("", "write PNG plots here (needs matplotlib: pip install -e .[plots])")
    metrics: str = option("", "a training run's metrics.jsonl, for the training-curve plot")
    threads: int = option(2, "torch threads")
    seed: int = option(0, "bootstrap and shortlist shuffling seed")


def parse_args(argv=None) -> tuple[Config, dict | None]:
    """(Config, the checkpoint's preset layer or None). The dataset, agent settings and --profiles default to those in
    the checkpoint's train_config.json, the frozen policy of a preset checkpoint to its warm start; flags override."""
    given = parse_flags(Config, __doc__.splitlines()[0], argv)
    saved = read_train_config(given["checkpoint"]) if given.get("checkpoint") else None
    taken = _from_checkpoint(saved, given)
    if taken:
        print(f"settings from {given['checkpoint']}/train_config.json: {taken}", flush=True)
    cfg = Config(**{**taken, **given})
    if cfg.table not in TABLES:
        raise SystemExit(f"error: --table must be one of {', '.join(TABLES)}, got {cfg.table!r}")
    if cfg.split not in ("train", "valid", "test"):
        raise SystemExit(f"error: --split must be train, valid or test, got {cfg.split!r}")
    if cfg.table != "main" and not cfg.checkpoint:
        raise SystemExit(f"error: --table {cfg.table} evaluates a checkpoint: give --checkpoint DIR")
    if cfg.checkpoint and not (Path(cfg.checkpoint) / "config.json").is_file():
        raise SystemExit(f"error: --checkpoint {cfg.checkpoint} is not a model folder (no config.json)")
    return cfg, (saved or {}).get("preset")


def _from_checkpoint(saved: dict | None, given: dict) -> dict:
    """The settings not given on the command line that the checkpoint's train_config.json supplies."""
    if saved is None:
        return {}
    taken = {k: saved["config"][k] for k in CHECKPOINT_SETTINGS if k in saved["config"]}
    if saved.get("profiles"):
        taken["profiles"] = saved["profiles"]
    layer = saved.get("preset")
    if layer is not None:
        taken["frozen"] = str(preset.warm_start_folder(layer, given["checkpoint"]))
    return {k: v for k, v in taken.items() if k not in given}


# ------------------------------------------------------------------------------------------------------------------
# Instances and systems
# ------------------------------------------------------------------------------------------------------------------


def eval_instances(cfg: Config, data, num_candidates: int):
    """The split's instances of size N (``agenticrec.data.split_instances``: the fixed file, or built by the same
    protocol and seed), the first --limit of them."""
    instances = split_instances(data, cfg.split, num_candidates)
    if not instances:
        raise SystemExit(f"error: {data.name} has no {cfg.split} instances")
    return instances[:cfg.limit] if cfg.limit else instances


class Systems:
    """Loads each model once and runs the agent or a baseline on instances, returning a table row:
    {"metrics": {metric: CI}, "agent": statistics (agents only)}; the first agent row's trajectories are kept."""

    def __init__(self, cfg: Config, data, layer: dict | None):
        self.cfg, self.data, self.prompt_data = cfg, data, preset.prompt_data(data, layer)
        toolbox_class = preset.toolbox_class(layer)
        if data.meta.get("evaluation_only"):  # no valid split to early-stop SASRec on: no collaborative tools
            log.warning("%s is evaluation-only: SASRec, its baseline and the collaborative tools are left out",
                        data.name)
            enabled = None if cfg.tools in ("all", "none") else tuple(cfg.tools.split(","))
            self.toolbox = toolbox_class(data, None, enabled=enabled)
        else:
            self.toolbox = make_toolbox(data, cfg.tools, toolbox_class, sasrec_train=preset.sasrec_train(layer))
        if cfg.profiles and cfg.profiles != "none":
            self.toolbox.profiles = load_profiles(cfg.profiles)
            log.info("get_user_profile: %d LLM profiles from %s (others: statistics)", len(self.toolbox.profiles),
                     cfg.profiles)
        self.models: dict[str, tuple] = {}
        self.trajectories: dict[str, list] = {}

    def _policy(self, folder: str):
        if folder not in self.models:
            if not (Path(folder) / "config.json").is_file():
                raise SystemExit(f"error: {folder} is not a model folder (no config.json); pass --frozen DIR")
            # a preset run's warm start is saved without its tokenizer: it shares the checkpoint's
            has_tokenizer = (Path(folder) / "tokenizer.json").is_file() or not self.cfg.checkpoint
            self.models[folder] = (load_pretrained(folder), load_tokenizer(folder if has_tokenizer
                                                                           else self.cfg.checkpoint))
        return self.models[folder]

    def agent(self, name: str, folder: str, instances, use_tools: bool = True, disabled: tuple[str, ...] = ()):
        model, tokenizer = self._policy(folder)
        toolbox = copy.copy(self.toolbox)  # the same fitted tools; only the enabled set differs
        toolbox.enabled = tuple(n for n in sorted(self.toolbox.names) if n not in disabled)
        unknown = set(disabled) - self.toolbox.names
        if unknown:
            raise SystemExit(f"error: --disable-tool names tools the agent does not have: {sorted(unknown)}")
        cfg = self.cfg
        agent_cfg = dataclasses.replace(agent_config(cfg, temperature=0.0), use_tools=use_tools)
        engine = Engine(model, cfg.max_context, kv_budget=int(cfg.kv_budget * 1e9), decode=cfg.decode)
        rollout = Rollout(engine, tokenizer, self.prompt_data, toolbox, agent_cfg)
        with tqdm(total=len(instances), desc=name, unit="request") as bar:
            trajectories, wall = run_agent(rollout, instances, rows_per_call(rollout, cfg.chunk), bar.update)
        if not self.trajectories:  # --show / --html render the first agent row; the others are not kept
            self.trajectories[name] = (trajectories, tokenizer)
        ranks = [t.rank for t in trajectories]
        return {"metrics": metric_cis(ranks, cfg.seed), "agent": agent_statistics(trajectories, wall), "ranks": ranks}

    def baseline(self, instances, scorer):
        ranks, seconds = scorer_ranks(self.data, instances, scorer)
        return {"metrics": metric_cis(ranks, self.cfg.seed), "seconds_per_request": seconds / len(instances),
                "ranks": ranks}

    def sasrec_scorer(self):
        return lambda instances: score_candidates(self.toolbox.sasrec, instances)

    def baselines(self, instances) -> dict:
        rows = {"random": self.baseline(instances, random_scorer),
                "popularity": self.baseline(instances, popularity_scorer(self.data)),
                "co-occurrence": self.baseline(instances, cooccurrence_scorer(self.data))}
        if self.toolbox.sasrec is not None:
            rows["SASRec"] = self.baseline(instances, self.sasrec_scorer())
        if isinstance(self.toolbox, preset.PresetToolbox):  # what the agent's own tools score, each order copied
            for name in preset.copied_tools(self.toolbox):
                scorer = preset.tool_ordering_scorer(self.data, self.toolbox, name)
                rows[f"{name}, copied"] = self.baseline(instances, scorer)
        return rows


# ------------------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------------------


def main_table(cfg: Config, systems: Systems, instances) -> dict:
    rows = {}
    if cfg.checkpoint:
        disabled = tuple(n for n in cfg.disable_tool.split(",") if n)
        use_tools = cfg.tools != "none"
        label = "agent" + ("" if use_tools else ", no tools") + "".join(f", without {n}" for n in disabled)
        rows[label] = systems.agent(label, cfg.checkpoint, instances, use_tools, disabled)
    if cfg.baselines:
        rows.update(systems.baselines(instances))
        if cfg.frozen:
            rows["frozen policy, no tools"] = systems.agent("frozen policy, no tools", cfg.frozen, instances, False)
            rows["frozen policy, tools"] = systems.agent("frozen policy, tools", cfg.frozen, instances, True)
    return rows


def ablation_table(cfg: Config, systems: Systems, instances) -> dict:
    """The paper's Table 2 layout: {frozen, trained} x {reasoning only, with tools}."""
    if not cfg.frozen:
        raise SystemExit("error: --table ablation needs the untrained policy: pass --frozen DIR")
    rows = {}
    for who, folder in (("frozen", cfg.frozen), ("trained", cfg.checkpoint)):
        for use_tools in (False, True):
            label = f"{who}, {'with tools' if use_tools else 'reasoning only'}"
            rows[label] = systems.agent(label, folder, instances, use_tools)
    return rows


def tools_table(cfg: Config, systems: Systems, instances) -> dict:
    """The trained agent with all its tools, then with each one disabled in turn (the paper has no such table)."""
    rows = {"all tools": systems.agent("all tools", cfg.checkpoint, instances)}
    for name in sorted(systems.toolbox.names):
        rows[f"without {name}"] = systems.agent(f"without {name}", cfg.checkpoint, instances, True, (name,))
    return rows


def scaling_table(cfg: Config, systems: Systems, data) -> dict:
    """Quality and latency against the candidate-set size N: the agent on all N candidates, SASRec, and for
    N > --shortlist the two-stage mode (SASRec keeps --shortlist candidates, the agent ranks those; a target the
    shortlist dropped is a miss, so its recall is reported beside it)."""
    rows = {}
    for n in (int(s) for s in cfg.scaling.split(",")):
        instances = eval_instances(cfg, data, n)
        rows[f"N={n}, agent"] = {"N": n, **systems.agent(f"N={n}, agent", cfg.checkpoint, instances)}
        scores = score_candidates(systems.toolbox.sasrec, instances)  # the baseline and the shortlist share them
        rows[f"N={n}, SASRec"] = {"N": n, **systems.baseline(instances, lambda xs: scores)}
        if n > cfg.shortlist:
            short = shortlist(instances, scores, cfg.shortlist, cfg.seed)
            label = f"N={n}, two-stage (SASRec top {cfg.shortlist} -> agent)"
            rows[label] = {"N": n, "shortlist_recall": shortlist_recall(short),
                           **systems.agent(label, cfg.checkpoint, short)}
    return rows


def scaling_markdown(rows: dict) -> str:
    lines = ["| N | system | H@1 | N@10 | shortlist recall | latency median / p90 (s) | generated tok/s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        m, a = row["metrics"], row.get("agent")
        recall = f"{row['shortlist_recall']:.3f}" if "shortlist_recall" in row else "-"
        latency = f"{a['latency_median_s']:.2f} / {a['latency_p90_s']:.2f}" if a else \
            f"{row['seconds_per_request'] * 1000:.2f} ms per request"
        speed = f"{a['generated_tokens_per_s']:.0f}" if a else "-"
        lines.append(f"| {row['N']} | {name.split(', ', 1)[1]} | {m['H@1']['mean']:.3f} [{m['H@1']['lo']:.3f}, "
                     f"{m['H@1']['hi']:.3f}] | {m['N@10']['mean']:.3f} [{m['N@10']['lo']:.3f}, "
                     f"{m['N@10']['hi']:.3f}] | {recall} | {latency} | {speed} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# Main: config -> instances -> systems -> tables -> trajectories / json / plots
# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, layer = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset)
    systems = Systems(cfg, data, layer)
    if layer is not None:
        log.info("CPU preset checkpoint: %s", preset.describe(layer))
    instances = eval_instances(cfg, data, cfg.candidates)
    if cfg.table == "scaling":
        rows = scaling_table(cfg, systems, data)
        text = scaling_markdown(rows)
    else:
        build = {"main": main_table, "ablation": ablation_table, "tools": tools_table}[cfg.table]
        rows = build(cfg, systems, instances)
        if not rows:
            raise SystemExit("error: nothing to evaluate: give --checkpoint DIR and / or --baselines")
        text = quality_table(rows)
        if any("agent" in row for row in rows.values()):
            text += "\n\n" + agent_table(rows)
        if cfg.table == "main" and cfg.checkpoint and len(rows) > 1:
            text += "\n\n" + paired_table(rows, cfg.seed)
    header = (f"{cfg.dataset}, {cfg.split} split, {cfg.candidates if cfg.table != 'scaling' else cfg.scaling} "
              f"candidates, {len(instances)} instances; 95% bootstrap CIs; agent settings: tools {cfg.tools}, "
              f"T_max {cfg.max_tool_calls}, context {cfg.max_context}")
    print(header + "\n\n" + text, flush=True)
    show_trajectories(cfg, systems, data)
    result = {"config": dataclasses.asdict(cfg), "instances": len(instances), "rows": rows,
              "seconds": time.perf_counter() - start}
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=2))
    if cfg.plots:
        from agenticrec.plots import write_plots
        write_plots(Path(cfg.plots), result, Path(cfg.metrics) if cfg.metrics else None)
    return result


def show_trajectories(cfg: Config, systems: Systems, data) -> None:
    if not systems.trajectories or not (cfg.show or cfg.html):
        return
    name, (trajectories, tokenizer) = next(iter(systems.trajectories.items()))  # the first agent row
    for t in trajectories[:cfg.show]:
        print("\n" + render_text(t, tokenizer, data))
    if cfg.html:
        page = render_html(trajectories[:max(cfg.show, 10)], tokenizer, data, f"{name}: {cfg.dataset} {cfg.split}")
        Path(cfg.html).write_text(page)
        log.info("wrote %s", cfg.html)


if __name__ == "__main__":
    main()
