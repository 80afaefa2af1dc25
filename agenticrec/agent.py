"""The ReAct rollout: a small state machine over the engine that turns (model, tools, instances) into scored
trajectories with exact loss masks.

    prompt ids ──> engine samples a turn ──> stop at </tool_call> or <|im_end|> ──> parse_turn
        ToolCall  ──> run the tool ──> append <tool_response> ids as forced tokens (mask 0) ──> next turn
        Answer    ──> done: reward = NDCG@10 (+ bonus) / miss
        Invalid   ──> done: reward = invalid   (also: tool budget exceeded, turn or context limit, tools disabled)

Everything is token-in / token-out (``agenticrec.tokenizer.tool_response_ids``): the ids the policy is trained
on are exactly the ids it sampled, plus forced observation ids that carry mask 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agenticrec.data import Dataset, Instance
from agenticrec.engine import Engine, Row, SamplingParams
from agenticrec.parsing import Answer, ChoiceFormat, Invalid, RankingFormat, ToolCall, parse_turn
from agenticrec.reward import RewardConfig, rank_of, reward
from agenticrec.tasks import PreferenceTask, preference_message
from agenticrec.tokenizer import END_TOOL_CALL, IM_END, render_chat, tool_response_ids
from agenticrec.tools import TOOLS, Toolbox, context_for

ALL_TOOL_NAMES = frozenset(t.name for t in TOOLS)  # known names: a disabled tool is not an unknown tool

# Invalid reasons decided by the agent (the parser's are agenticrec.parsing.Reason values)
TOOL_BUDGET_EXCEEDED = "tool_budget_exceeded"
TOOLS_DISABLED = "tools_disabled"
TURN_TOKEN_LIMIT = "turn_token_limit"
CONTEXT_LIMIT = "context_limit"

SYSTEM_WITH_TOOLS = (
    "You are a recommender agent. Rank the candidate items by how likely the user is to choose each one next. "
    "You may call the tools to gather evidence, one call per turn. Think inside <think>...</think> before acting. "
    "When you are ready, answer with <answer>\\boxed{{[i1, i2, ...]}}</answer> listing the {k} most likely "
    "candidate numbers, best first.")
SYSTEM_CHOICE = (  # PPR's A / B questions (agenticrec.tasks); the same tools, budget and format rules
    "You are a recommender agent. Decide which of two items the user is more, or less, likely to choose next, as "
    "the question asks.{tools} Think inside <think>...</think> before acting. When you are ready, answer with "
    "<answer>\\boxed{{A}}</answer> or <answer>\\boxed{{B}}</answer>.")
CHOICE_TOOLS_SENTENCE = " You may call the tools to gather evidence, one call per turn."
SYSTEM_NO_TOOLS = (
    "You are a recommender agent. Rank the candidate items by how likely the user is to choose each one next. "
    "Think inside <think>...</think>, then answer with <answer>\\boxed{{[i1, i2, ...]}}</answer> listing the {k} "
    "most likely candidate numbers, best first.")


@dataclass(frozen=True)
class AgentConfig:
    """How one rollout runs."""

    max_tool_calls: int = 10  # T_max: one more call makes the trajectory invalid
    max_turn_tokens: int = 512  # tokens the policy may sample in one turn
    max_context: int = 6144  # prompt + all turns + observations
    answer_length: int = 10  # K of the top-K answer (capped at the number of candidates)
    use_tools: bool = True  # False: reasoning only, no tool schemas, any tool call is invalid
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    reward: RewardConfig = RewardConfig()


@dataclass
class ToolCallRecord:
    name: str
    arguments: dict
    error: str | None
    seconds: float
    observation: str
    observation_ids: int  # forced tokens appended (mask 0)


@dataclass
class Trajectory:
    instance: Instance
    group: int  # index of the instance in the rollout batch (the GRPO group)
    ids: list[int]
    mask: list[int]  # 1 exactly on tokens the policy sampled
    logprobs: list[float]  # sampled tokens' log-probs at the sampling temperature (0 elsewhere)
    prompt_len: int
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    ranking: tuple[int, ...] | None = None  # candidate items (not numbers), best first; None when invalid
    invalid_reason: str | None = None
    reward: float = 0.0
    turns: int = 0
    seconds: float = 0.0

    @property
    def rank(self) -> int | None:
        return rank_of(self.ranking, self.instance.target) if self.ranking is not None else None

    @property
    def tokens(self) -> dict[str, int]:
        generated = sum(self.mask)
        return {"prompt": self.prompt_len, "generated": generated,
                "observation": len(self.ids) - self.prompt_len - generated}

    @property
    def tool_errors(self) -> int:
        return sum(call.error is not None for call in self.tool_calls)


def user_message(instance: Instance, data: Dataset) -> str:
    history = "\n".join(f"{n}. {data.title(i)}" for n, i in enumerate(instance.history, 1))
    candidates = "\n".join(f"[{n}] {data.title(c)}" for n, c in enumerate(instance.candidates, 1))
    return (f"The user's history, oldest first:\n{history}\n\nCandidates:\n{candidates}\n\n"
            f"Rank the candidates for this user.")


def build_prompt(tokenizer, instance: Instance, data: Dataset, toolbox: Toolbox | None, cfg: AgentConfig) -> list[int]:
    if isinstance(instance, PreferenceTask):
        system = SYSTEM_CHOICE.format(tools=CHOICE_TOOLS_SENTENCE if cfg.use_tools else "")
        user = preference_message(instance, data.title)
    else:
        k = min(cfg.answer_length, len(instance.candidates))
        system = (SYSTEM_WITH_TOOLS if cfg.use_tools else SYSTEM_NO_TOOLS).format(k=k)
        user = user_message(instance, data)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    tools = toolbox.schemas if cfg.use_tools and toolbox is not None else None
    return render_chat(tokenizer, messages, tools)


class Rollout:
    """Runs the agent for a batch of instances x group_size through one engine call."""

    def __init__(self, engine: Engine, tokenizer, data: Dataset, toolbox: Toolbox | None, cfg: AgentConfig):
        self.engine, self.tokenizer, self.data, self.toolbox, self.cfg = engine, tokenizer, data, toolbox, cfg
        self.im_end = tokenizer.convert_tokens_to_ids(IM_END)
        self.end_tool_call = tuple(tokenizer.encode(END_TOOL_CALL, add_special_tokens=False))
        self.tool_names = toolbox.names if toolbox is not None and cfg.use_tools else set()

    def run(self, instances: Sequence[Instance], group_size: int = 1, seed: int | None = None,
            slots: int | None = None) -> list[Trajectory]:
        """One trajectory per instance and group member (``slots``: the engine's, continuous batching)."""
        start = time.perf_counter()
        prompts = [build_prompt(self.tokenizer, x, self.data, self.toolbox, self.cfg) for x in instances]
        trajectories = [Trajectory(x, g, [], [], [], len(prompts[g]))
                        for g, x in enumerate(instances) for _ in range(group_size)]
        contexts = [context_for(x, self.data) for x in instances]
        params = SamplingParams(self.cfg.temperature, self.cfg.top_k, self.cfg.top_p, self.cfg.max_turn_tokens,
                                stop_token_ids=(self.im_end,), stop_sequences=(self.end_tool_call,))

        def on_turn_end(r: int, row: Row) -> list[int] | None:
            t = trajectories[r]
            t.turns, t.seconds = row.turns, time.perf_counter() - start
            return self._step(t, row, contexts[t.group])

        rows = self.engine.run(prompts, params, on_turn_end, group_size=group_size, seed=seed, slots=slots)
        for t, row in zip(trajectories, rows):
            t.ids, t.mask, t.logprobs = row.ids, row.mask, row.logprobs
            if row.finish_reason == "context":
                self._finish(t, None, CONTEXT_LIMIT)
                t.seconds = time.perf_counter() - start
        return trajectories

    def _step(self, t: Trajectory, row: Row, context) -> list[int] | None:
        """One finished turn: returns the observation ids to force, or None when the trajectory is over."""
        if row.stop_reason == "max_new_tokens":
            return self._finish(t, None, TURN_TOKEN_LIMIT)
        n, choice = len(t.instance.candidates), isinstance(t.instance, PreferenceTask)
        action = parse_turn(self.tokenizer.decode(row.turn_ids), ALL_TOOL_NAMES,
                            ChoiceFormat() if choice else RankingFormat(n, min(self.cfg.answer_length, n)))
        if isinstance(action, Answer) and choice:  # the chosen option as a one-item ranking: rank 1 iff correct
            return self._finish(t, (t.instance.candidates["AB".index(action.choice)],), None)
        if isinstance(action, Answer):
            return self._finish(t, tuple(t.instance.candidates[i - 1] for i in action.ranking), None)
        if isinstance(action, Invalid):
            return self._finish(t, None, action.reason.value)
        if not self.cfg.use_tools or action.name not in self.tool_names:
            return self._finish(t, None, TOOLS_DISABLED)
        if len(t.tool_calls) >= self.cfg.max_tool_calls:
            return self._finish(t, None, TOOL_BUDGET_EXCEEDED)
        return self._observe(t, action, context)

    def _observe(self, t: Trajectory, call: ToolCall, context) -> list[int]:
        earlier = tuple((c.name, c.arguments) for c in t.tool_calls if c.error is None)
        result = self.toolbox.call(call.name, call.arguments, context, earlier)
        forced = tool_response_ids(self.tokenizer, [result.text])
        t.tool_calls.append(ToolCallRecord(call.name, call.arguments, result.error, result.seconds, result.text,
                                           len(forced)))
        return forced

    def _finish(self, t: Trajectory, ranking, invalid_reason: str | None) -> None:
        """Record the outcome and the reward; returns None, the engine's signal that the row is done."""
        t.ranking, t.invalid_reason = ranking, invalid_reason
        if isinstance(t.instance, PreferenceTask) and ranking is not None:  # PPR: 1 if correct, 0 if wrong
            t.reward = float(ranking[0] == t.instance.target)
        else:
            t.reward = reward(ranking, t.instance.target, len(t.tool_calls), self.cfg.reward)
