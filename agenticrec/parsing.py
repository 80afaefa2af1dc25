r"""One assistant turn -> a tool call, a final answer, or the named reason it is invalid. Never raises.

A valid turn, after an optional ``<think>...</think>`` block and any free text:

    <tool_call>{"name": "get_similar_items", "arguments": {"item_title": "Halo 3"}}</tool_call>
or
    <answer>\boxed{[8, 3, 15, ...]}</answer>          (a ranking: exactly K distinct candidate numbers 1..N)
    <answer>\boxed{A}</answer>                        (a choice, for PPR's A / B questions)

followed by nothing but whitespace (a trailing ``<|im_end|>`` is the turn's end marker and is ignored). Whatever
else the policy writes maps to one ``Reason``; the rollout turns every ``Invalid`` into the invalid reward.
Candidates are numbered from 1, as the prompt lists them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

from agenticrec.tokenizer import END_THINK, END_TOOL_CALL, ENDOFTEXT, IM_END, THINK, TOOL_CALL

ANSWER, END_ANSWER = "<answer>", "</answer>"


class Reason(str, Enum):
    NO_ACTION = "no_action"  # neither a tool call nor an answer
    UNCLOSED_THINK = "unclosed_think"
    UNCLOSED_TOOL_CALL = "unclosed_tool_call"
    MULTIPLE_TOOL_CALLS = "multiple_tool_calls"  # one action per turn (ReAct)
    TOOL_CALL_AND_ANSWER = "tool_call_and_answer"
    TEXT_AFTER_TOOL_CALL = "text_after_tool_call"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "call_not_an_object"
    MISSING_NAME = "missing_name"  # absent or not a string
    ARGUMENTS_NOT_OBJECT = "arguments_not_object"
    UNKNOWN_TOOL = "unknown_tool"
    UNCLOSED_ANSWER = "unclosed_answer"
    MULTIPLE_ANSWERS = "multiple_answers"
    TEXT_AFTER_ANSWER = "text_after_answer"
    BAD_ANSWER_FORMAT = "bad_answer_format"  # not \boxed{[...]} / \boxed{X}
    NON_INTEGER_INDEX = "non_integer_index"
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    DUPLICATE_INDEX = "duplicate_index"
    TOO_FEW_ITEMS = "too_few_items"
    TOO_MANY_ITEMS = "too_many_items"
    UNKNOWN_CHOICE = "unknown_choice"
    PARSER_ERROR = "parser_error"  # a bug in this module; tests assert it never happens


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class Answer:
    ranking: tuple[int, ...] = ()  # candidate numbers, best first
    choice: str | None = None  # for A / B questions


@dataclass(frozen=True)
class Invalid:
    reason: Reason
    detail: str = field(default="", compare=False)


Action = ToolCall | Answer | Invalid


@dataclass(frozen=True)
class RankingFormat:
    """``\\boxed{[i1, ..., iK]}``: exactly ``length`` distinct integers in 1..num_candidates."""

    num_candidates: int
    length: int

    def __post_init__(self):
        if not 1 <= self.length <= self.num_candidates:
            raise ValueError(f"answer length {self.length} must be in 1..num_candidates={self.num_candidates}")


@dataclass(frozen=True)
class ChoiceFormat:
    """``\\boxed{X}`` with X one of ``options``."""

    options: tuple[str, ...] = ("A", "B")


BOXED_LIST = re.compile(r"\s*\\boxed\{\s*\[(?P<body>[^\[\]]*)\]\s*\}\s*", re.DOTALL)
BOXED_WORD = re.compile(r"\s*\\boxed\{\s*(?P<body>[^{}]*?)\s*\}\s*", re.DOTALL)
INTEGER = re.compile(r"[+-]?\d+")


def parse_turn(text: str, tool_names: Collection[str], answer_format: RankingFormat | ChoiceFormat) -> Action:
    """Classify one assistant turn's text (decoded with its control tokens)."""
    try:
        return _parse_turn(text, tool_names, answer_format)
    except Exception as err:  # a bug here must cost one rollout, never the run; the reason says what happened
        return Invalid(Reason.PARSER_ERROR, f"{type(err).__name__}: {err}"[:200])


def _parse_turn(text: str, tool_names: Collection[str], answer_format) -> Action:
    action = _after_reasoning(strip_end_markers(text))
    if action is None:
        return Invalid(Reason.UNCLOSED_THINK)
    call_at, answer_at = action.find(TOOL_CALL), action.find(ANSWER)
    if call_at < 0 and answer_at < 0:
        return Invalid(Reason.NO_ACTION)
    if answer_at < 0 or 0 <= call_at < answer_at:  # the first tag decides what this turn is
        body, rest = _tagged(action[call_at + len(TOOL_CALL):], END_TOOL_CALL)
        if body is None:
            return Invalid(Reason.UNCLOSED_TOOL_CALL)
        trailing = _trailing_reason(rest, same=TOOL_CALL, same_reason=Reason.MULTIPLE_TOOL_CALLS, other=ANSWER,
                                    text_reason=Reason.TEXT_AFTER_TOOL_CALL)
        return trailing or _parse_tool_call(body, tool_names)
    body, rest = _tagged(action[answer_at + len(ANSWER):], END_ANSWER)
    if body is None:
        return Invalid(Reason.UNCLOSED_ANSWER)
    trailing = _trailing_reason(rest, same=ANSWER, same_reason=Reason.MULTIPLE_ANSWERS, other=TOOL_CALL,
                                text_reason=Reason.TEXT_AFTER_ANSWER)
    parse_answer = _parse_choice if isinstance(answer_format, ChoiceFormat) else _parse_ranking
    return trailing or parse_answer(body, answer_format)


def _after_reasoning(text: str) -> str | None:
    """The text after the reasoning block, if one comes before the first action tag (tags inside the reasoning
    are not actions): ``<think>...</think>``, or just ``...</think>`` when the prompt opened the block. None when
    an opened block is never closed."""
    action_tags = [i for i in (text.find(TOOL_CALL), text.find(ANSWER)) if i >= 0]
    first_action = min(action_tags, default=len(text))
    think_at, end_at = text.find(THINK), text.find(END_THINK)
    if 0 <= think_at < first_action:
        end_at = text.find(END_THINK, think_at)
        return None if end_at < 0 else text[end_at + len(END_THINK):]
    if 0 <= end_at < first_action:
        return text[end_at + len(END_THINK):]
    return text


def strip_end_markers(text: str) -> str:
    """Drop trailing whitespace and end-of-turn control tokens (``<|im_end|>``, ``<|endoftext|>``)."""
    previous = None
    while previous != text:
        previous, text = text, text.rstrip()
        for marker in (IM_END, ENDOFTEXT):
            text = text.removesuffix(marker)
    return text


def _tagged(after_open: str, close: str) -> tuple[str | None, str]:
    """(body, rest) around the first closing tag; body None when the tag is never closed."""
    if close not in after_open:
        return None, ""
    body, rest = after_open.split(close, 1)
    return body, rest


def _trailing_reason(rest: str, same: str, same_reason: Reason, other: str, text_reason: Reason) -> Invalid | None:
    """What is wrong with text after a closed action, if anything: a second action of the same or the other
    kind, or any other non-whitespace text."""
    if same in rest:
        return Invalid(same_reason)
    if other in rest:
        return Invalid(Reason.TOOL_CALL_AND_ANSWER)
    if rest.strip():
        return Invalid(text_reason, rest.strip()[:80])
    return None


def _parse_tool_call(body: str, tool_names: Collection[str]) -> Action:
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as err:  # ValueError covers JSONDecodeError and 4300+-digit integers
        return Invalid(Reason.BAD_JSON, str(err)[:120])
    if not isinstance(call, dict):
        return Invalid(Reason.NOT_AN_OBJECT, type(call).__name__)
    name, arguments = call.get("name"), call.get("arguments", {})
    if not isinstance(name, str):
        return Invalid(Reason.MISSING_NAME)
    if not isinstance(arguments, dict):
        return Invalid(Reason.ARGUMENTS_NOT_OBJECT, type(arguments).__name__)
    if name not in tool_names:
        return Invalid(Reason.UNKNOWN_TOOL, name[:80])
    return ToolCall(name, arguments)


def _parse_ranking(body: str, fmt: RankingFormat) -> Action:
    match = BOXED_LIST.fullmatch(body)
    if match is None:
        return Invalid(Reason.BAD_ANSWER_FORMAT, body.strip()[:80])
    items = [item.strip() for item in match["body"].split(",")] if match["body"].strip() else []
    if any(not INTEGER.fullmatch(item) for item in items):
        return Invalid(Reason.NON_INTEGER_INDEX, next(i for i in items if not INTEGER.fullmatch(i))[:40])
    if any(len(item.lstrip("+-")) > 6 for item in items):  # compare huge numbers as text: int() caps digits
        return Invalid(Reason.INDEX_OUT_OF_RANGE, "huge number")
    ranking = tuple(int(item) for item in items)
    if any(not 1 <= i <= fmt.num_candidates for i in ranking):
        return Invalid(Reason.INDEX_OUT_OF_RANGE, str([i for i in ranking if not 1 <= i <= fmt.num_candidates]))
    if len(set(ranking)) != len(ranking):
        return Invalid(Reason.DUPLICATE_INDEX)
    if len(ranking) < fmt.length:
        return Invalid(Reason.TOO_FEW_ITEMS, f"{len(ranking)} < {fmt.length}")
    if len(ranking) > fmt.length:
        return Invalid(Reason.TOO_MANY_ITEMS, f"{len(ranking)} > {fmt.length}")
    return Answer(ranking=ranking)


def _parse_choice(body: str, fmt: ChoiceFormat) -> Action:
    match = BOXED_WORD.fullmatch(body)
    if match is None:
        return Invalid(Reason.BAD_ANSWER_FORMAT, body.strip()[:80])
    if match["body"] not in fmt.options:
        return Invalid(Reason.UNKNOWN_CHOICE, match["body"][:40])
    return Answer(choice=match["body"])
