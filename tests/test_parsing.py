"""The turn parser: every invalid case has a named reason, valid actions round-trip, and no input makes it raise."""

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agenticrec.parsing import (Answer, ChoiceFormat, Invalid, RankingFormat, Reason, ToolCall, parse_turn)
from agenticrec.tokenizer import tool_call_text

TOOLS = {"get_user_profile", "get_similar_items"}
RANK = RankingFormat(num_candidates=20, length=10)
TOP10 = "[8, 3, 15, 1, 20, 2, 4, 5, 6, 7]"


def answer(body: str) -> str:
    return f"<answer>\\boxed{{{body}}}</answer>"


def test_valid_tool_call_with_reasoning_and_end_marker():
    text = '<think>\nNeed neighbours. <tool_call>{"name": "nope"}</tool_call>\n</think>\n\nLet me look.\n' \
           + tool_call_text("get_similar_items", {"item_title": "Halo 3"}) + "<|im_end|>"
    assert parse_turn(text, TOOLS, RANK) == ToolCall("get_similar_items", {"item_title": "Halo 3"})
    assert parse_turn('<tool_call>{"name": "get_user_profile"}</tool_call>', TOOLS, RANK) == ToolCall(
        "get_user_profile", {})


def test_tags_inside_arguments_or_reasoning_are_not_actions():
    text = '<think>maybe <answer>?</think><tool_call>{"name": "get_user_profile", "arguments": {"q": "<think>"}}' \
           '</tool_call>'
    assert parse_turn(text, TOOLS, RANK) == ToolCall("get_user_profile", {"q": "<think>"})
    implicit = "the prompt opened the reasoning block </think>" + answer(TOP10)  # Qwen3 thinking templates
    assert isinstance(parse_turn(implicit, TOOLS, RANK), Answer)


def test_valid_answers():
    assert parse_turn("Ranking done.\n" + answer(TOP10) + "\n<|im_end|>", TOOLS, RANK) == Answer(
        ranking=(8, 3, 15, 1, 20, 2, 4, 5, 6, 7))
    assert parse_turn(answer(" A "), TOOLS, ChoiceFormat()) == Answer(choice="A")


INVALID_CASES = [
    ("I think item 3 is best.", Reason.NO_ACTION),
    ("<think>still thinking " + answer(TOP10), Reason.UNCLOSED_THINK),
    ('<tool_call>{"name": "get_user_profile"', Reason.UNCLOSED_TOOL_CALL),
    ('<tool_call>{"name": "get_user_profile"}</tool_call><tool_call>{"name": "get_user_profile"}</tool_call>',
     Reason.MULTIPLE_TOOL_CALLS),
    ('<tool_call>{"name": "get_user_profile"}</tool_call>' + answer(TOP10), Reason.TOOL_CALL_AND_ANSWER),
    (answer(TOP10) + '<tool_call>{"name": "get_user_profile"}</tool_call>', Reason.TOOL_CALL_AND_ANSWER),
    ('<tool_call>{"name": "get_user_profile"}</tool_call> and more', Reason.TEXT_AFTER_TOOL_CALL),
    ('<tool_call>{"name": "get_user_profile",}</tool_call>', Reason.BAD_JSON),
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", Reason.BAD_JSON),  # RecursionError inside json
    ('<tool_call>{"name": "get_user_profile", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>",
     Reason.BAD_JSON),  # Python refuses to parse integers of 4300+ digits
    ('<tool_call>["get_user_profile"]</tool_call>', Reason.NOT_AN_OBJECT),
    ('<tool_call>{"arguments": {}}</tool_call>', Reason.MISSING_NAME),
    ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', Reason.MISSING_NAME),
    ('<tool_call>{"name": "get_similar_items", "arguments": "Halo"}</tool_call>', Reason.ARGUMENTS_NOT_OBJECT),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', Reason.UNKNOWN_TOOL),
    ("<answer>\\boxed{[1, 2]}", Reason.UNCLOSED_ANSWER),
    (answer(TOP10) + answer(TOP10), Reason.MULTIPLE_ANSWERS),
    (answer(TOP10) + " because", Reason.TEXT_AFTER_ANSWER),
    ("<answer>[8, 3, 15]</answer>", Reason.BAD_ANSWER_FORMAT),
    (answer("[[1, 2], 3]"), Reason.BAD_ANSWER_FORMAT),
    (answer("[1, 2, three, 4, 5, 6, 7, 8, 9, 10]"), Reason.NON_INTEGER_INDEX),
    (answer("[1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10]"), Reason.NON_INTEGER_INDEX),
    (answer("[1, 2, 3, 4, 5, 6, 7, 8, 9, 21]"), Reason.INDEX_OUT_OF_RANGE),
    (answer("[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]"), Reason.INDEX_OUT_OF_RANGE),
    (answer("[" + "9" * 5000 + ", 2, 3, 4, 5, 6, 7, 8, 9, 10]"), Reason.INDEX_OUT_OF_RANGE),
    (answer("[1, 2, 3, 4, 5, 6, 7, 8, 9, 1]"), Reason.DUPLICATE_INDEX),
    (answer("[1, 2, 3]"), Reason.TOO_FEW_ITEMS),
    (answer("[1, 2, 3, 4, 5, 6, 7, 8, 9]"), Reason.TOO_FEW_ITEMS),  # K - 1
    (answer("[]"), Reason.TOO_FEW_ITEMS),
    (answer("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"), Reason.TOO_MANY_ITEMS),
]


@pytest.mark.parametrize("text, reason", INVALID_CASES)
def test_each_invalid_case_has_its_reason(text, reason):
    result = parse_turn(text, TOOLS, RANK)
    assert isinstance(result, Invalid) and result.reason == reason, result


def test_choice_reasons():
    assert parse_turn(answer("C"), TOOLS, ChoiceFormat()).reason == Reason.UNKNOWN_CHOICE
    assert parse_turn("<answer>A</answer>", TOOLS, ChoiceFormat()).reason == Reason.BAD_ANSWER_FORMAT


def test_every_reason_is_reachable():
    covered = {reason for _, reason in INVALID_CASES} | {Reason.UNKNOWN_CHOICE}  # the latter in test_choice_reasons
    assert covered == set(Reason) - {Reason.PARSER_ERROR}


FRAGMENTS = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>", "<|im_end|>",
             "\\boxed{", "}", "[", "]", "{", ", ", '"name": ', '"arguments": ', '"get_user_profile"',
             '"get_similar_items"', "{}", "null", "true", "1e309", "NaN", "-0", "9" * 4400, "3", "20", "21", "é",
             "\u202e", "\x00", "🎮", "\n", " ", "\\", '"', "'", "[[[[", "]]]]"]


def check_result(result):
    assert isinstance(result, (ToolCall, Answer, Invalid))
    if isinstance(result, Invalid):
        assert result.reason != Reason.PARSER_ERROR, result.detail
    elif isinstance(result, ToolCall):
        assert result.name in TOOLS and isinstance(result.arguments, dict)
    else:
        assert len(result.ranking) == 10 == len(set(result.ranking)) and all(1 <= i <= 20 for i in result.ranking)


@settings(max_examples=5000, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_strings_never_raise(text):
    check_result(parse_turn(text, TOOLS, RANK))


@settings(max_examples=5000, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40),
       cut=st.integers(0, 400))
def test_adversarial_strings_never_raise(parts, cut):
    text = "".join(parts)
    for candidate in (text, text[:cut]):  # also truncated mid-token
        check_result(parse_turn(candidate, TOOLS, RANK))
        result = parse_turn(candidate, TOOLS, ChoiceFormat())
        assert not isinstance(result, Invalid) or result.reason != Reason.PARSER_ERROR


@settings(max_examples=300, deadline=None)
@given(ranking=st.permutations(range(1, 21)), prefix=st.text(max_size=30).filter(lambda s: "<" not in s))
def test_valid_rankings_round_trip(ranking, prefix):
    text = prefix + answer(json.dumps(ranking[:10]))
    assert parse_turn(text, TOOLS, RANK) == Answer(ranking=tuple(ranking[:10]))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(TOOLS)),
       arguments=st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=20), st.integers()), max_size=3))
def test_valid_tool_calls_round_trip(name, arguments):
    # The one thing arguments cannot hold is the closing tag itself: generation stops at </tool_call>.
    assume("</tool_call>" not in json.dumps(arguments, ensure_ascii=False))
    assert parse_turn(tool_call_text(name, arguments), TOOLS, RANK) == ToolCall(name, arguments)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_exactly_k_items_is_the_only_valid_length(n, data):
    """K - 1 distinct in-range items are too few and K + 1 too many, for every K <= N (a 9-item top-10 is invalid)."""
    k = data.draw(st.integers(1, n))
    order = data.draw(st.permutations(range(1, n + 1)))
    fmt = RankingFormat(num_candidates=n, length=k)
    assert parse_turn(answer(json.dumps(order[:k])), TOOLS, fmt) == Answer(ranking=tuple(order[:k]))
    assert parse_turn(answer(json.dumps(order[:k - 1])), TOOLS, fmt).reason == Reason.TOO_FEW_ITEMS
    if k < n:
        assert parse_turn(answer(json.dumps(order[:k + 1])), TOOLS, fmt).reason == Reason.TOO_MANY_ITEMS
