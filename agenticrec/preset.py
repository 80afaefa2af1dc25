"""The CPU preset: a layer over the method that lets a 1 M-parameter model run and learn the pipeline on a CPU.

Nothing here is in the paper. The paper recipe (``--model <Qwen3 folder>``) never touches this module; the preset
(``--model preset``) applies all of it explicitly, and ``export`` records it in the run's ``train_config.json``
(``LAYER`` plus the warm start's folder), from which ``train_ppr.py`` and ``evaluate.py`` apply it again.

- **The model**: a 2-layer Qwen3 (``PRESET_MODEL``) with a byte-level BPE trained on the dataset's titles and the
  agent's fixed texts, warm-started on a scripted expert (``agenticrec.warmstart``): no instruct model can be
  downloaded here, so the preset manufactures a policy that knows the format and the tools.
- **Ordering lines** (``PresetToolbox``): the three ranking tools end with every candidate number by the tool's
  score, in the answer's own list format, so that a tiny model can carry a tool's whole order into its answer. The
  paper's tools return evidence only; with them a 2-layer model never writes a ranking better than chance.
- **Short titles** (``ShortTitles``): titles in prompts are cut at ``TITLE_CHARS`` so that prompts stay near 800
  tokens (tool outputs keep their own widths).
- **Settings** (``GRPO``, ``PPR``, ``SASREC_TRAIN``): the tool subset whose orders the warm start copies, small
  budgets, learning rates at which a tiny model moves, and SASRec's epoch budget (docs/grpo.md and docs/ppr.md,
  "The CPU preset").
- **A / B answers before PPR** (``choice_policy``): on PPR's A / B questions the ranking tools end with an option
  line instead (the option to answer first), and the stage-1 policy is fine-tuned to copy it before the paper's
  objective runs (``agenticrec.warmstart.choice_warm_start``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

from agenticrec.baselines import cooccurrence
from agenticrec.data import (DEFAULT_CANDIDATES, Dataset, Instance, interleave, interleaved_instances,
                            split_instances)
from agenticrec.model import Qwen3Config
from agenticrec.sasrec import TrainConfig
from agenticrec.tools import EarlierCalls, Tool, Toolbox, ToolContext, context_for
from agenticrec.warmstart import (WarmStartConfig, choice_task, choice_warm_start, option_line, ordering_line,
                                  ordering_of, warm_start)

log = logging.getLogger("agenticrec.preset")

# 2 layers, d=128: ~0.8M parameters besides the embeddings; a GRPO step of 8 prompts x 8 samples takes well under
# a second on 2 cores (../shared/cpu-preset-notes.md measured 0.2 s for a model of this size).
PRESET_MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, rope_theta=10_000.0, tie_word_embeddings=True,
                    max_position_embeddings=4096)

# train_grpo.py's settings under --model preset: the two ranking tools whose merge beats every single order
# (co-occurrence with the history, the similar users' taste breaking its ties; the expert consults the second in
# half of its trajectories); 16 groups of G 4 (the rollouts of a group that take the same path copy the same line
# and share a reward, so what the update learns from is the contrast between paths: 16 x 4 gives ~1.75x more such
# contrasts than the paper's 8 x 8 for the same tokens); budgets that keep prompts near 700 tokens; lr 3e-5 (the
# tiny model moves little at the paper's 1e-6; at 7.5e-5 and 1.5e-4 single early updates swung the second call's
# share by up to 0.3, so that the first batches' draws decided which path a run settled on); the paper's KL
# coefficient 1e-3 (at 0.01 the pull back to the warm start undid the second tool's gain within 15 steps); 40 steps
# (a budget of steps, not of time: the choice's gain is small against its spread between users, +0.06 against 0.41,
# so 20 steps reached the merge only for warm starts that began near it, while at 40 the greedy policy of every seed
# measured, 0, 1 and 2, consults both tools on 0.98-1.00 of requests); evaluations of 300 valid instances.
GRPO = dict(batch_size=16, group_size=4, lr=3e-5, warmup_steps=5, max_turn_tokens=96, max_context=2048,
            tools="get_session_behavior,get_similar_users", steps=40,
            eval_instances=300, checkpoint_every=10, max_tool_calls=4, eval_chunk=300)

# train_ppr.py's settings on a preset checkpoint, by objective (its agent settings come from the checkpoint's
# train_config.json; docs/ppr.md, "The CPU preset", has the measurements).
# grpo, the paper's: first the A / B fine-tune (choice_policy, at most 400 steps; its gate passed at step 300 when
# measured), then stage 1's settings (16 x G 4, lr 3e-5, KL 1e-3) for 40 steps, with rehearsal (without it the policy,
# which learns to drop the second tool on A / B questions within 11 steps, dropped it on the ranking too: H@1 -0.021
# on 2,000 test instances). Pairs from 1,000 train instances (40 steps take 640 of their ~1,000 tasks) and 500 valid
# ones: sized, with the fine-tune, for 20 minutes on 2 cores (11 min 22 s measured).
# logistic (Proposition 4.2's loss, an ablation here): pairs mined from 2,000 train instances, 3 epochs (~190 steps of
# 1.6 s); the loss sat at 2 log 2 for 350-700 steps at lr 3e-3 before an earlier preset's policy learned to read MORE
# / LESS (the last 200 tokens of each context made that faster). Rehearsal keeps the ranking format (without it: 0
# valid).
PPR = {"grpo": dict(choice_warm_start=400, mine_instances=1000, valid_mine_instances=500, batch_size=16, group_size=4,
                    lr=3e-5, kl_coef=1e-3, warmup_steps=5, steps=40, replay_coef=1.0, eval_instances=300,
                    checkpoint_every=10, eval_chunk=250),
       "logistic": dict(mine_instances=2000, batch_size=32, lr=3e-3, warmup_steps=5, epochs=3.0,
                        train_context_tokens=200, replay_coef=1.0, checkpoint_every=100, eval_chunk=250)}

# The SASRec behind the collaborative tools and the SASRec baseline trains at most 14 epochs (the method's default is
# 20, with early stopping after 3 epochs without a valid gain): sized for the Quickstart's 10 minutes. Measured
# uncapped on two 2-core CPUs, Games trains 17 epochs and keeps one of the first 14 (valid NDCG@10 0.6512 on one,
# 0.6531 on the other), Beauty 13 and keeps the 10th: on both datasets and machines the cap saves epochs and
# changes no weight (torch.equal).
SASREC_TRAIN = dict(epochs=14)

TITLE_CHARS = 24  # titles in prompts are cut here (with "…")


# ------------------------------------------------------------------------------------------------------------------
# The layer: what a preset run records, and what a reader of its checkpoint applies again
# ------------------------------------------------------------------------------------------------------------------


def layer(warm_start: Path) -> dict:
    """The preset layer as ``train_config.json`` records it."""
    return {"title_chars": TITLE_CHARS, "ordering_lines": list(ORDERING_SCORES), "ordering_line_keys": ORDERING_KEYS,
            "warm_start": str(warm_start), "model": PRESET_MODEL, "sasrec_train": SASREC_TRAIN}


def warm_start_folder(preset: dict, checkpoint: str | Path) -> Path:
    """A preset checkpoint's warm start (its frozen policy): where the run recorded it, else beside the checkpoint's
    run folder (a run folder copied or moved elsewhere)."""
    recorded = Path(preset["warm_start"])
    return recorded if (recorded / "config.json").is_file() else Path(checkpoint).parent / "preset" / "warm_start"


def sasrec_train(preset: dict | None) -> TrainConfig:
    """How the tools' SASRec is trained: the method's default, or under the preset its epoch budget (a checkpoint
    saved before the layer recorded one was trained with the default)."""
    return TrainConfig(**(preset or {}).get("sasrec_train", {}))


def prompt_data(data: Dataset, preset: dict | None) -> Dataset:
    """The dataset prompts are built from: ``data`` itself, or under the preset its titles cut short."""
    return data if preset is None else short_titles(data, preset["title_chars"])


def toolbox_class(preset: dict | None) -> type[Toolbox]:
    """The paper's toolbox, or under the preset the one whose ranking tools end with an ordering line."""
    return Toolbox if preset is None else PresetToolbox


def describe(preset: dict) -> str:
    """One line for the log: what the preset layer changes."""
    return (f"titles in prompts cut at {preset['title_chars']} characters; ordering lines after "
            f"{', '.join(preset['ordering_lines'])}; SASRec trained for at most {sasrec_train(preset).epochs} epochs; "
            f"the frozen policy is the warm start {preset['warm_start']}")


# ------------------------------------------------------------------------------------------------------------------
# Short titles
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShortTitles(Dataset):
    """A view of a dataset whose ``title`` is cut at ``max_chars`` (the lists are shared, not copied)."""

    max_chars: int = TITLE_CHARS

    def title(self, item: int) -> str:
        text = super().title(item)
        return text if len(text) <= self.max_chars else text[:self.max_chars - 1] + "…"


def short_titles(data: Dataset, max_chars: int) -> ShortTitles:
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(Dataset)}
    return ShortTitles(**fields, max_chars=max_chars)


# ------------------------------------------------------------------------------------------------------------------
# Ordering lines
# ------------------------------------------------------------------------------------------------------------------


def _popularity(box: Toolbox, ctx: ToolContext, arguments: dict) -> list[float]:
    return [float(box.popularity[c]) for c in ctx.candidates]


def _similarity(box: Toolbox, ctx: ToolContext, arguments: dict) -> list[float]:
    item = box.resolve(arguments["item_title"], ctx)
    sims = box.item_vectors @ box.item_vectors[item]  # as get_similar_items computes them
    return [float(sims[c]) for c in ctx.candidates]


def _cooccurrence(box: Toolbox, ctx: ToolContext, arguments: dict) -> list[float]:
    """How often each candidate sat within 3 positions of a history item in the train sequences (the co-occurrence
    baseline's score): the session-based evidence, in the classic sense of items consumed together."""
    return [float(sum(box.neighbours[h][c] for h in ctx.history)) for c in ctx.candidates]


def _users_taste(box: Toolbox, ctx: ToolContext, arguments: dict) -> list[float]:
    user = box.user_vector(ctx.history)  # the SASRec taste vector that placed the similar users near this one
    return [float(box.item_vectors[c] @ user) for c in ctx.candidates]


ORDERING_KEYS = "the ranking tools consulted so far, in the order of ORDERING_SCORES, then popularity"
# tool -> (criterion named in the line, the candidates' scores)
# (in this order in a line that combines several: the sparse co-occurrence counts decide where they have evidence,
# a dense cosine breaks their ties, popularity comes last as it always breaks the remaining ones)
ORDERING_SCORES = {"get_session_behavior": ("co-occurrence with the history", _cooccurrence),
                   "get_similar_items": ("similarity", _similarity),
                   "get_similar_users": ("similar users' taste", _users_taste),
                   "candidates_analyze": ("popularity", _popularity)}


@dataclasses.dataclass
class PresetToolbox(Toolbox):
    """The paper's toolbox, with an ``ordering_line`` after each ranking tool's evidence.

    The line orders the candidates by every ranking tool the trajectory has consulted so far, whatever the order
    of the calls: the first of them in ``ORDERING_SCORES`` decides, the next one breaks its ties, and so on,
    popularity last. A tool called alone gives its own order; ``get_session_behavior`` and ``get_similar_users``
    together give co-occurrence with the similar users' taste among the candidates it cannot tell apart. So a model
    that can only copy a line can still act on two sources of evidence: which tools to consult is the agent's
    choice, and GRPO's to learn. On PPR's A / B questions (``ToolContext.direction`` set) the same order ends the
    observation as an ``option_line`` instead: the option it favours first for MORE, last for LESS."""

    def __post_init__(self):
        super().__post_init__()
        self.neighbours = cooccurrence(self.data)  # item -> Counter of the items within 3 positions in train

    def observe(self, tool: Tool, context: ToolContext, arguments: dict, earlier: EarlierCalls = ()) -> str:
        text = super().observe(tool, context, arguments)
        if tool.name not in ORDERING_SCORES:
            return text
        consulted = []
        for call in (*earlier, (tool.name, arguments)):
            if call[0] in ORDERING_SCORES and call not in consulted:
                consulted.append(call)
        # stable: one tool called on two items keeps the call order
        consulted.sort(key=lambda call: list(ORDERING_SCORES).index(call[0]))
        keys = [ORDERING_SCORES[name][1](self, context, args) for name, args in consulted]
        keys.append(_popularity(self, context, {}))
        order = sorted(range(len(context.candidates)), key=lambda j: [-key[j] for key in keys] + [j])
        rank_scores = [0.0] * len(order)
        for rank, j in enumerate(order):
            rank_scores[j] = -float(rank)
        criterion = ", then ".join(ORDERING_SCORES[name][0] for name, _ in consulted)
        if context.direction is not None:  # an A / B question: its two options, the one to answer first
            return text + "\n" + option_line(criterion, [j + 1 for j in order], context.direction)
        return text + "\n" + ordering_line(criterion, rank_scores)


def tool_ordering_scorer(data: Dataset, toolbox: PresetToolbox, name: str, arguments: dict | None = None):
    """A ranking tool's own ordering, copied verbatim: the policy that always calls ``name`` once and answers with
    its order (an ``agenticrec.baselines`` scorer). The reference a preset agent should beat."""
    def scorer(instances: list[Instance]) -> list[list[float]]:
        out = []
        for x in instances:
            order = ordering_of(toolbox.call(name, arguments or {}, context_for(x, data)).text)
            if order is None:
                raise ValueError(f"tool {name} does not end with an ordering of the candidates")
            scores = [0.0] * len(x.candidates)
            for rank, number in enumerate(order):
                scores[number - 1] = -float(rank)
            out.append(scores)
        return out
    return scorer


def copied_tools(toolbox: PresetToolbox) -> list[str]:
    """The enabled ranking tools whose order can be copied without choosing an argument."""
    return [t.name for t in toolbox.tools if t.name in ORDERING_SCORES and not t.required]


def copied_orders(data: Dataset, toolbox: PresetToolbox, instances: list[Instance]) -> dict[str, dict]:
    """{"<tool>, copied": metrics} for each enabled no-argument ranking tool: what copying it alone scores."""
    from agenticrec import baselines
    return {f"{name}, copied": baselines.evaluate_scorer(data, instances, tool_ordering_scorer(data, toolbox, name))
            for name in copied_tools(toolbox)}


# ------------------------------------------------------------------------------------------------------------------
# The model: tokenizer, size, warm start
# ------------------------------------------------------------------------------------------------------------------


def preset_config(tokenizer) -> Qwen3Config:
    """The preset model sized to a tokenizer's vocabulary, with its EOS / pad ids."""
    return Qwen3Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **PRESET_MODEL)


def preset_tokenizer(data, folder, vocab_size: int = 4096, split_digits: bool = True,
                     candidate_sizes: tuple[int, ...] = (DEFAULT_CANDIDATES,)):
    """The preset's byte-level BPE, trained on the dataset's item titles and the agent's fixed texts (system
    prompts, tool schemas, answer format, lists of candidate numbers up to each of ``candidate_sizes``), saved as a
    Hugging Face tokenizer folder; reused when present. The number lists give each candidate number of a trained
    size one token: a number the BPE splits ("37" -> "3", "7") is copied digit by digit, which the tiny model's
    copying circuit does not learn in the warm start's drill (measured on a mix of 20 and 50: drill loss 0.44 after 150
    steps, against 0.006 after 300 with whole-number tokens; after 200 expert steps 7 of the gate's first 16 sampled
    answers, 8 of each size, still repeated a number: ``duplicate_index``)."""
    from agenticrec.agent import SYSTEM_NO_TOOLS, SYSTEM_WITH_TOOLS
    from agenticrec.tokenizer import load_tokenizer, tool_call_text, train_bpe_tokenizer
    from agenticrec.tools import TOOLS

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    fixed = [SYSTEM_WITH_TOOLS, SYSTEM_NO_TOOLS, json.dumps([t.schema for t in TOOLS]),
             "The user's history, oldest first:", "Candidates:", "Rank the candidates for this user.",
             "<answer>\\boxed{[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}</answer>", "assistant\n<think>",
             "I follow the last ranking.", "Past interactions, most first:", "best first:",
             # PPR's A / B answers, and an A / B thought the warm start does not use (kept: dropping it changes the
             # BPE merges, hence every preset number in docs/)
             *(f"The last ranking puts {n} {w}: option {'AB'[n - 1]}." for n in (1, 2) for w in ("first", "last")),
             "<answer>\\boxed{A}</answer>", "<answer>\\boxed{B}</answer>",
             *(tool_call_text(t.name, {p: "Halo 3" for p in t.parameters}) for t in TOOLS),
             *(f"I will use {t.name}." for t in TOOLS), *(f"Then I will use {t.name}." for t in TOOLS)]
    titles = [data.title(i) for i in range(len(data.items))]
    numbers = [f"[{i}] " + ", ".join(str((i * 7 + j) % n + 1) for j in range(10))
               for n in sorted({DEFAULT_CANDIDATES, *candidate_sizes}) for i in range(1, n + 1)]
    return train_bpe_tokenizer(fixed * 200 + numbers * 50 + titles, folder, vocab_size=vocab_size,
                               split_digits=split_digits)


def preset_policy(data: Dataset, toolbox: PresetToolbox, agent_cfg, seed: int, info, out: Path,
                  candidate_sizes: tuple[int, ...] = (DEFAULT_CANDIDATES,)):
    """(model, tokenizer): the preset's tokenizer and a tiny Qwen3 warm-started on the scripted expert, both cached
    under out/preset (rank 0 trains, the others wait and load). Exits when the warm start misses its gate.

    ``candidate_sizes``: the candidate-set sizes the warm start trains on, interleaved (its tokenizer's numbers, its
    copy drill, its expert's instances and its gate: an equal share of each size); the copy drill takes 150 steps
    per size (at 20 and 50 together: loss 0.006 after 300)."""
    import torch

    from agenticrec import distributed as D
    from agenticrec.model import Qwen3, load_pretrained, save_pretrained
    from agenticrec.trainer import rank0_first

    tokenizer = rank0_first(lambda: preset_tokenizer(data, out / "preset" / "tokenizer", split_digits=False,
                                                     candidate_sizes=candidate_sizes), info)
    folder, report_path = out / "preset" / "warm_start", out / "preset" / "warm_start_report.json"
    if (folder / "config.json").is_file():
        _check_cached_sizes(report_path, candidate_sizes)
        return load_pretrained(folder, device=info.device), tokenizer
    torch.manual_seed(seed)
    model = Qwen3(preset_config(tokenizer)).to(info.device)
    if info.is_main:
        gate = interleave([split_instances(data, "valid", n)[-(64 // len(candidate_sizes)):] for n in candidate_sizes])
        cfg = WarmStartConfig(drill_steps=WarmStartConfig.drill_steps * len(candidate_sizes),
                              drill_candidates=candidate_sizes)
        report = warm_start(model, tokenizer, prompt_data(data, layer(folder)), toolbox,
                            interleaved_instances(data, "train", candidate_sizes), gate, agent_cfg, cfg)
        report["candidate_sizes"] = list(candidate_sizes)
        log.info("warm start: %s", {k: v for k, v in report.items() if k != "history"})
        report_path.write_text(json.dumps(report, indent=2))
        if not report["passed_gate"]:  # GRPO on a policy without valid answers sees only -1: nothing to learn
            save_pretrained(model, out / "preset" / "warm_start_failed")
            raise SystemExit(f"error: the warm start stopped at step {report['steps']} with a greedy valid rate of "
                             f"{report['valid_rate']:.2f}, below its gate; see {report_path}")
        save_pretrained(model, folder)
    D.barrier(info)
    return load_pretrained(folder, device=info.device), tokenizer


def _check_cached_sizes(report_path: Path, candidate_sizes: tuple[int, ...]) -> None:
    """A cached warm start is reused only for the candidate-set sizes it was trained on (its report says which; a
    report written before it said so is of the default size)."""
    if not report_path.is_file():
        return
    cached = tuple(json.loads(report_path.read_text()).get("candidate_sizes", [DEFAULT_CANDIDATES]))
    if cached != tuple(candidate_sizes):
        raise SystemExit(f"error: {report_path.parent} holds a warm start trained on {cached} candidates, not "
                         f"{tuple(candidate_sizes)}: use another --out")


# ------------------------------------------------------------------------------------------------------------------
# PPR under the preset: a stage-1 policy that answers A / B questions
# ------------------------------------------------------------------------------------------------------------------

REPLAY_INSTANCES = 512  # train instances whose stage-1 greedy ranking trajectories the A / B fine-tune rehearses


def choice_policy(model, tokenizer, data: Dataset, toolbox: PresetToolbox, agent_cfg, layer: dict, info, out: Path,
                  stage1: str, candidate_sizes: tuple[int, ...], cfg):
    """(model, folder): the stage-1 ``model`` fine-tuned to answer PPR's A / B questions
    (``agenticrec.warmstart.choice_warm_start``), cached in out/preset/choice_start (rank 0 trains, the others wait
    and load). The stage-1 preset policy never saw an A / B question, so the paper's objective would meet only
    invalid answers. Its own greedy ranking trajectories on the first train instances are the rehearsal that keeps
    its ranking. ``cfg``: a ``warmstart.ChoiceStartConfig`` (its seed draws the gate's questions too). Exits when the
    fine-tune misses its gate."""
    import torch

    from agenticrec import distributed as D
    from agenticrec.agent import Rollout
    from agenticrec.engine import Engine
    from agenticrec.model import load_pretrained, save_pretrained
    from agenticrec.trainer import rehearsal_data

    folder, report_path = out / "preset" / "choice_start", out / "preset" / "choice_start_report.json"
    if not (folder / "config.json").is_file() and info.is_main:
        prompts = prompt_data(data, layer)
        train = interleaved_instances(data, "train", candidate_sizes)
        rollout = Rollout(Engine(model, agent_cfg.max_context), tokenizer, prompts, toolbox, agent_cfg)
        replay = rehearsal_data(rollout, train[:REPLAY_INSTANCES], cap=128)
        rng = random.Random(cfg.seed)
        valid_tail = interleave([split_instances(data, "valid", n)[-(64 // len(candidate_sizes)):]
                                 for n in candidate_sizes])
        gate = [choice_task(x, rng) for x in valid_tail]
        report = choice_warm_start(model, tokenizer, prompts, toolbox, train[REPLAY_INSTANCES:], gate, replay,
                                   agent_cfg, cfg)
        report["stage1"] = str(Path(stage1).resolve())
        log.info("A / B fine-tune: %s", {k: v for k, v in report.items() if k != "history"})
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2))
        if not report["passed_gate"]:  # GRPO on A / B answers that ignore the evidence learns nothing from it
            raise SystemExit(f"error: the A / B fine-tune stopped at step {report['steps']} with a follow rate of "
                             f"{report['follow_rate']:.2f}, below its gate; see {report_path}")
        save_pretrained(model, folder)
    D.barrier(info)
    _check_cached_stage1(report_path, stage1)
    return load_pretrained(folder, dtype=torch.float32, device=info.device), folder


def _check_cached_stage1(report_path: Path, stage1: str) -> None:
    """A cached A / B fine-tune is reused only for the stage-1 checkpoint it was made from (its report says which)."""
    if not report_path.is_file():
        raise SystemExit(f"error: {report_path} is missing, so the A / B fine-tune in {report_path.parent} cannot be "
                         f"matched to a stage-1 checkpoint: use another --out")
    cached = json.loads(report_path.read_text())["stage1"]
    if cached != str(Path(stage1).resolve()):
        raise SystemExit(f"error: {report_path.parent} holds an A / B fine-tune of {cached}, not of {stage1}: use "
                         f"another --out")
