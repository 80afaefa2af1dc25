"""Qwen3's chat format as ids: our renderer against the real tokenizers' apply_chat_template, token-in/token-out,
and the CPU preset's BPE."""

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenticrec.tokenizer import (CONTROL_TOKENS, TokenizerError, load_tokenizer, render_chat, render_chat_text,
                                  tool_call_text, tool_response_ids, train_bpe_tokenizer)

TOOLS = [
    {"type": "function", "function": {"name": "get_similar_items", "description": "Items similar to a title.",
                                      "parameters": {"type": "object",
                                                     "properties": {"item_title": {"type": "string"}},
                                                     "required": ["item_title"]}}},
    {"type": "function", "function": {"name": "get_user_profile", "description": "The user's profile.",
                                      "parameters": {"type": "object", "properties": {}}}},
]
CALL = {"name": "get_similar_items", "arguments": {"item_title": "Zelda: Breath of the Wild — Édition"}}
CONVERSATION = [
    {"role": "system", "content": "You rank candidate items for a user."},
    {"role": "user", "content": "History: 1. Halo 3\n2. Mario Kart 8\nCandidates: [0] Tetris [1] Doom"},
    {"role": "assistant", "content": "I should look at neighbours.",
     "tool_calls": [{"type": "function", "function": CALL}]},
    {"role": "tool", "content": "1. Splatoon 2 (score 0.91)\n2. Metroid"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_user_profile", "arguments": {}}]},
    {"role": "tool", "content": "Likes: shooters"},
    {"role": "tool", "content": "second result in the same turn"},
    {"role": "assistant", "content": "<answer>\\boxed{[1, 0]}</answer>"},
    {"role": "user", "content": "Rank again, please."},
]


@pytest.fixture(scope="module", params=["Qwen3-0.6B", "Qwen3-4B-Instruct-2507"])
def real_tokenizer(request, qwen3_tokenizer_dirs):
    return load_tokenizer(qwen3_tokenizer_dirs[request.param])


def template_ids(tokenizer, messages, tools=TOOLS):
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_control_tokens_are_single_qwen3_ids(real_tokenizer):
    ids = {t: real_tokenizer.encode(t, add_special_tokens=False) for t in CONTROL_TOKENS}
    assert ids["<|im_start|>"] == [151644] and ids["<|im_end|>"] == [151645]
    assert ids["<tool_call>"] == [151657] and ids["</tool_response>"] == [151666] and ids["<think>"] == [151667]


@pytest.mark.parametrize("tools", [TOOLS, None])
def test_render_matches_apply_chat_template_on_a_tool_conversation(real_tokenizer, tools):
    # Every prefix that ends where a rollout renders a prompt: after a user turn or after tool results.
    for end in [i + 1 for i, m in enumerate(CONVERSATION) if m["role"] in ("user", "tool")]:
        messages = CONVERSATION[:end]
        expected = real_tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                      tokenize=False)
        assert render_chat_text(messages, tools) == expected
        assert render_chat(real_tokenizer, messages, tools) == template_ids(real_tokenizer, messages, tools)


def test_token_in_token_out_suffix_equals_the_full_render(real_tokenizer):
    """prompt ids + what the policy sampled + tool_response_ids == the template's ids of the whole conversation."""
    prompt = render_chat(real_tokenizer, CONVERSATION[:2], TOOLS)
    sampled = real_tokenizer.encode("I should look at neighbours.\n" + tool_call_text(**CALL),
                                    add_special_tokens=False)
    observation = tool_response_ids(real_tokenizer, [CONVERSATION[3]["content"]])
    assert prompt + sampled + observation == template_ids(real_tokenizer, CONVERSATION[:4])
    # Second turn: the policy itself sampled <|im_end|> after </tool_call>, and two results share one user turn.
    sampled2 = real_tokenizer.encode(tool_call_text("get_user_profile", {}) + "<|im_end|>",
                                     add_special_tokens=False)
    observation2 = tool_response_ids(real_tokenizer, [CONVERSATION[5]["content"], CONVERSATION[6]["content"]],
                                     close_assistant_turn=False)
    assert (prompt + sampled + observation + sampled2 + observation2
            == template_ids(real_tokenizer, CONVERSATION[:7]))


def test_unknown_role_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        render_chat_text([{"role": "robot", "content": "hi"}])
    with pytest.raises(TokenizerError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")


CORPUS = [
    "Super Mario Odyssey - Nintendo Switch", "Halo 3: ODST (Xbox 360)", "The Legend of Zelda: Breath of the Wild",
    "PlayStation 4 Slim 1TB Console", "Call of Duty: Black Ops III - Standard Edition", "Pokémon Sun",
    "Candidates: [0] Tetris [1] Doom [12] Minecraft [19] FIFA 18", "You rank candidate items for a user.",
] * 20


@pytest.fixture(scope="module")
def preset_tokenizer(tmp_path_factory):
    return train_bpe_tokenizer(CORPUS, tmp_path_factory.mktemp("bpe"), vocab_size=400)


def test_preset_bpe_has_qwen3_control_tokens_and_single_digits(preset_tokenizer):
    ids = [preset_tokenizer.encode(t, add_special_tokens=False) for t in CONTROL_TOKENS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(CONTROL_TOKENS)
    assert preset_tokenizer.eos_token == "<|im_end|>" and preset_tokenizer.pad_token == "<|endoftext|>"
    digits = preset_tokenizer.encode("[12] 190", add_special_tokens=False)
    assert [preset_tokenizer.decode([i]) for i in digits] == ["[", "1", "2", "]", " ", "1", "9", "0"]
    assert len(preset_tokenizer.encode("The Legend of Zelda", add_special_tokens=False)) < 8  # merges learned
    assert 300 < len(preset_tokenizer) <= 400


def test_preset_bpe_renders_the_chat_format_like_its_template(preset_tokenizer):
    for end in (2, 4, 7):
        messages = CONVERSATION[:end]
        assert render_chat(preset_tokenizer, messages, TOOLS) == template_ids(preset_tokenizer, messages)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_preset_bpe_round_trips_any_text(preset_tokenizer, text):
    ids = preset_tokenizer.encode(text, add_special_tokens=False)
    assert preset_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)  # byte-level: nothing is unknown


def test_preset_bpe_can_keep_numbers_whole(tmp_path):
    corpus = CORPUS + [f"[{i}] [{i + 1}] {i}, {i + 2}" for i in range(1, 21)] * 20
    tokenizer = train_bpe_tokenizer(corpus, tmp_path, vocab_size=500, split_digits=False)
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("[17] 12, 20", add_special_tokens=False)]
    assert "17" in pieces and "12" in pieces and "20" in pieces
