"""Evaluate a checkpoint and the baselines on fixed instances: the paper's tables with bootstrap CIs, plus validity,
tool use, tokens and latency (docs/evaluation.md).

    python evaluate.py --checkpoint runs/grpo/final --split test --baselines       # Table 1 layout
    python evaluate.py --checkpoint runs/grpo/final --table ablation               # Table 2: frozen/trained x tools
    python evaluate.py --checkpoint runs/grpo/final --table tools                  # each tool disabled in turn
    python evaluate.py --checkpoint runs/grpo/final --table scaling --limit 500    # N = 20, 50, 100 (+ two-stage)
    python evaluate.py --checkpoint runs/grpo/final --limit 20 --show 2 --html out.html

Conventions: the agent decodes greedily, one engine call per --chunk instances; a preset checkpoint (train_grpo's
marker file) brings its own agent settings (tools, budgets, title length, context), which flags override; the
"frozen" policy is the untrained start (a preset run's warm start, or --frozen DIR). Every metric is a mean over
instances with a 95% percentile bootstrap CI (10,000 resamples).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

import train_grpo as G
from agenticrec.agent import AgentConfig, Rollout
from agenticrec.baselines import cooccurrence_scorer, popularity_scorer, random_scorer
from agenticrec.data import build_instances, instances_path, load_dataset, load_instances
from agenticrec.engine import Engine
from agenticrec.evaluation import (agent_statistics, agent_table, metric_cis, quality_table, render_html,
                                   render_text, run_agent, scorer_ranks, shortlist, shortlist_recall)
from agenticrec.model import load_pretrained
from agenticrec.sasrec import score_candidates
from agenticrec.tokenizer import load_tokenizer
from agenticrec.tools import Toolbox

log = logging.getLogger("evaluate")
TABLES = ("main", "ablation", "tools", "scaling")
AGENT_SETTINGS = ("tool_set", "max_tool_calls", "max_turn_tokens", "max_context", "max_title_chars")


@dataclass
class Config:
    checkpoint: str = ""  # a model folder with its tokenizer (train_grpo / train_ppr out/final); empty: baselines only
    dataset: str = "games"  # a dataset under data/
    split: str = "test"  # test | valid | train
    candidates: int = 20  # N candidates per instance; N != 20 is built with the same protocol (seeded)
    limit: int = 0  # evaluate the first N instances (0 = all)
    table: str = "main"  # main | ablation (frozen/trained x tools) | tools (each disabled) | scaling (N sizes)
    tools: bool = True  # --no-tools: reasoning only (no tool schemas; a tool call is invalid)
    disable_tool: str = ""  # comma-separated tools to leave out of the agent's toolbox
    baselines: bool = False  # add random, popularity, co-occurrence, SASRec and the frozen policy with / without tools
    frozen: str = ""  # the untrained policy's folder; default for a preset checkpoint: its run's warm start
    scaling: str = "20,50,100"  # candidate-set sizes of --table scaling
    shortlist: int = 20  # two-stage mode for N > this: SASRec keeps this many candidates, the agent ranks them
    tool_set: str = ""  # tools the agent may call ("all", a comma list); default: the checkpoint's preset, else all
    max_tool_calls: int = 0  # T_max (0 = the checkpoint's preset, else 10)
    max_turn_tokens: int = 0  # tokens per turn (0 = the checkpoint's preset, else 512)
    max_context: int = 0  # tokens per trajectory (0 = the checkpoint's preset, else 6144)
    max_title_chars: int = -1  # shorten titles (-1 = the checkpoint's preset, else no limit; 0 = no limit)
    chunk: int = 250  # instances per engine call (bounds the KV cache)
    show: int = 0  # print this many complete trajectories of the first agent row
    html: str = ""  # write those trajectories (at least 10) as one self-contained HTML page here
    json: str = ""  # write every number here
    plots: str = ""  # write PNG plots here (needs matplotlib: pip install -e .[plots])
    metrics: str = ""  # a training run's metrics.jsonl, for the training-curve plot
    threads: int = 2  # torch threads
    seed: int = 0  # bootstrap and shortlist shuffling seed


DEFAULT_AGENT = dict(tool_set="all", max_tool_calls=10, max_turn_tokens=512, max_context=6144, max_title_chars=0)


def parse_args(argv=None) -> Config:
    cfg = Config(**G.parse_flags(Config, Path(__file__), __doc__, argv))
    if cfg.table not in TABLES:
        raise SystemExit(f"error: --table must be one of {', '.join(TABLES)}, got {cfg.table!r}")
    if cfg.split not in ("train", "valid", "test"):
        raise SystemExit(f"error: --split must be train, valid or test, got {cfg.split!r}")
    if cfg.table != "main" and not cfg.checkpoint:
        raise SystemExit(f"error: --table {cfg.table} evaluates a checkpoint: give --checkpoint DIR")
    if cfg.checkpoint and not (Path(cfg.checkpoint) / "config.json").is_file():
        raise SystemExit(f"error: --checkpoint {cfg.checkpoint} is not a model folder (no config.json)")
    return _with_agent_settings(cfg)


def _with_agent_settings(cfg: Config) -> Config:
    """Unset agent settings come from the checkpoint's preset marker (the settings it was trained with), else the
    paper's defaults. The frozen policy of a preset run is its warm start."""
    marker = Path(cfg.checkpoint) / G.PRESET_MARKER if cfg.checkpoint else None
    trained = json.loads(marker.read_text()) if marker is not None and marker.is_file() else {}
    fill = {}
    for name in AGENT_SETTINGS:
        if getattr(cfg, name) == getattr(Config, name):  # the field's default means "not given"
            fill[name] = trained.get("tools" if name == "tool_set" else name, DEFAULT_AGENT[name])
    if not cfg.frozen and trained:  # the run folder holds out/final and out/preset/warm_start
        runs = [Path(cfg.checkpoint).parent, Path(trained.get("out", ""))]
        fill["frozen"] = next((str(r / "preset" / "warm_start") for r in runs
                               if (r / "preset" / "warm_start" / "config.json").is_file()), "")
    return dataclasses.replace(cfg, **fill)


# ------------------------------------------------------------------------------------------------------------------
# Instances and systems
# ------------------------------------------------------------------------------------------------------------------


def eval_instances(cfg: Config, data, num_candidates: int):
    """The fixed instance file for N = 20; other N are built by the same protocol and seed (deterministic), as
    files of every size would not fit in the repository."""
    if instances_path(data.name, cfg.split, num_candidates).is_file():
        instances = load_instances(data.name, cfg.split, num_candidates)  # a corrupt file is an error, not rebuilt
    else:
        instances = build_instances(data, cfg.split, num_candidates)[0]
    if not instances:
        raise SystemExit(f"error: {data.name} has no {cfg.split} instances")
    return instances[:cfg.limit] if cfg.limit else instances


class Systems:
    """Loads each model once and runs the agent or a baseline on instances, returning a table row:
    {"metrics": {metric: CI}, "agent": statistics (agents only)}; the first agent row's trajectories are kept."""

    def __init__(self, cfg: Config, data):
        self.cfg, self.data = cfg, data
        if data.meta.get("evaluation_only"):  # no valid split to early-stop SASRec on: no collaborative tools
            log.warning("%s is evaluation-only: SASRec, its baseline and the collaborative tools are left out",
                        data.name)
            enabled = None if cfg.tool_set in ("", "all") else tuple(cfg.tool_set.split(","))
            self.toolbox = Toolbox(data, None, enabled=enabled)
        else:
            self.toolbox = G.make_toolbox(SimpleNamespace(tools=cfg.tool_set or "all"), data)
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
        agent_cfg = AgentConfig(max_tool_calls=cfg.max_tool_calls, max_turn_tokens=cfg.max_turn_tokens,
                                max_context=cfg.max_context, use_tools=use_tools,
                                max_title_chars=cfg.max_title_chars or None, temperature=0.0)
        rollout = Rollout(Engine(model, cfg.max_context), tokenizer, self.data, toolbox, agent_cfg)
        with tqdm(total=len(instances), desc=name, unit="request") as bar:
            trajectories, wall = run_agent(rollout, instances, cfg.chunk, bar.update)
        if not self.trajectories:  # --show / --html render the first agent row; the others are not kept
            self.trajectories[name] = (trajectories, tokenizer)
        return {"metrics": metric_cis([t.rank for t in trajectories], cfg.seed),
                "agent": agent_statistics(trajectories, wall)}

    def baseline(self, instances, scorer):
        ranks, seconds = scorer_ranks(self.data, instances, scorer)
        return {"metrics": metric_cis(ranks, self.cfg.seed), "seconds_per_request": seconds / len(instances)}

    def sasrec_scorer(self):
        return lambda instances: score_candidates(self.toolbox.sasrec, instances)

    def baselines(self, instances) -> dict:
        rows = {"random": self.baseline(instances, random_scorer),
                "popularity": self.baseline(instances, popularity_scorer(self.data)),
                "co-occurrence": self.baseline(instances, cooccurrence_scorer(self.data))}
        if self.toolbox.sasrec is not None:
            rows["SASRec"] = self.baseline(instances, self.sasrec_scorer())
        return rows


# ------------------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------------------


def main_table(cfg: Config, systems: Systems, instances) -> dict:
    rows = {}
    if cfg.checkpoint:
        disabled = tuple(n for n in cfg.disable_tool.split(",") if n)
        label = "agent" + ("" if cfg.tools else ", no tools") + "".join(f", without {n}" for n in disabled)
        rows[label] = systems.agent(label, cfg.checkpoint, instances, cfg.tools, disabled)
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
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset)
    systems = Systems(cfg, data)
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
    header = (f"{cfg.dataset}, {cfg.split} split, {cfg.candidates if cfg.table != 'scaling' else cfg.scaling} "
              f"candidates, {len(instances)} instances; 95% bootstrap CIs; agent settings: tools {cfg.tool_set}, "
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
