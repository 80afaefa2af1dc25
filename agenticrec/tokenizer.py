"""Tokenizers and Qwen3's chat format, rendered straight to token ids.

- ``load_tokenizer(folder)``: any Hugging Face tokenizer folder through ``transformers`` (the real Qwen3 files, or
  the CPU preset's), checked to encode each Qwen3 control token as one id.
- ``train_bpe_tokenizer(texts, folder)``: the CPU preset's small byte-level BPE, trained with ``tokenizers`` on
  the project's own text, with Qwen3's pre-tokenizer (digits split one by one) and Qwen3's control tokens.
- ``render_chat(tokenizer, messages, tools)``: the ids of a system / user / assistant / tool conversation in
  Qwen3's chat format (what ``apply_chat_template`` renders for Qwen3-4B-Instruct-2507, and for Qwen3-0.6B when
  assistant turns carry no ``<think>`` history).
- ``tool_response_ids(tokenizer, contents)``: the ids to append after an assistant turn that ended in a tool
  call: close the turn, one user turn holding the ``<tool_response>`` blocks, open the next assistant turn.

Rollouts are token-in / token-out: the next model input is prompt ids + sampled ids + ``tool_response_ids``,
never a decode-and-re-render, because BPE is not a bijection and Qwen3's template rewrites earlier turns.
Every piece here starts or ends at a control token, which the tokenizer splits out before BPE, so concatenating
the pieces' ids gives exactly the ids of the concatenated text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK, END_THINK = "<think>", "</think>"
TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
TOOL_RESPONSE, END_TOOL_RESPONSE = "<tool_response>", "</tool_response>"
CONTROL_TOKENS = [ENDOFTEXT, IM_START, IM_END, THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, TOOL_RESPONSE,
                  END_TOOL_RESPONSE]

# Qwen2/Qwen3's pre-tokenizer split (from their tokenizer.json): contractions, letter runs, single digits,
# punctuation runs, newlines, spaces.
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TOOLS_PREAMBLE = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_POSTAMBLE = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                   "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                   "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


class TokenizerError(ValueError):
    """A tokenizer folder that cannot serve Qwen3's chat format."""


def load_tokenizer(folder: str | Path):
    """Load a Hugging Face tokenizer folder (offline) and check Qwen3's control tokens are single ids."""
    from transformers import AutoTokenizer  # imported here: transformers is slow to import

    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: tokenizer folder not found")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for token in CONTROL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise TokenizerError(f"{folder}: {token} encodes to {len(ids)} ids {ids}; Qwen3's chat format needs one")
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], folder: str | Path, vocab_size: int = 4096, split_digits: bool = True):
    """Train a byte-level BPE on ``texts`` and save it as a Hugging Face tokenizer folder; return it loaded.

    Same pre-tokenizer as Qwen3 (digits one by one), the same control tokens, ``<|im_end|>`` as EOS and
    ``<|endoftext|>`` as padding, and Qwen3's chat template so that ``apply_chat_template`` works on it too.
    ``split_digits=False`` keeps digit runs whole, so that frequent numbers (candidate numbers 1-20) become single
    tokens: a tiny model then copies a ranking number by number instead of digit by digit.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    pattern = QWEN_SPLIT_PATTERN if split_digits else QWEN_SPLIT_PATTERN.replace(r"|\p{N}|", r"|\p{N}+|")
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CONTROL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token=ENDOFTEXT,
                                      chat_template=QWEN3_CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    folder = Path(folder)
    wrapped.save_pretrained(str(folder))
    return load_tokenizer(folder)


# --------------------------------------------------------------------------------------------------------------------
# Chat rendering
# --------------------------------------------------------------------------------------------------------------------


def render_chat_text(messages: Sequence[dict], tools: Sequence[dict] | None = None,
                     add_generation_prompt: bool = True) -> str:
    """Qwen3's chat format as text. Messages: {"role": system|user|assistant|tool, "content": str,
    "tool_calls": [{"name", "arguments"}] (assistant only)}. Assistant content is rendered verbatim: we never
    rewrite what the policy generated (Qwen3's template would move or drop earlier ``<think>`` blocks)."""
    parts = [_system_text(messages, tools)]
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    previous_role = None
    for i, message in enumerate(body):
        role, content = message["role"], message.get("content") or ""
        next_role = body[i + 1]["role"] if i + 1 < len(body) else None
        if role in ("user", "system"):
            parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        elif role == "assistant":
            parts.append(f"{IM_START}assistant\n{content}{_tool_calls_text(message, content)}{IM_END}\n")
        elif role == "tool":  # consecutive tool results share one user turn
            opener = f"{IM_START}user" if previous_role != "tool" else ""
            closer = f"{IM_END}\n" if next_role != "tool" else ""
            parts.append(f"{opener}\n{TOOL_RESPONSE}\n{content}\n{END_TOOL_RESPONSE}{closer}")
        else:
            raise ValueError(f"message {i}: unknown role {role!r}")
        previous_role = role
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def _system_text(messages: Sequence[dict], tools: Sequence[dict] | None) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    if not tools:
        return f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""
    signatures = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    prefix = f"{system}\n\n" if system is not None else ""
    return f"{IM_START}system\n{prefix}{TOOLS_PREAMBLE}{signatures}{TOOLS_POSTAMBLE}{IM_END}\n"


def _tool_calls_text(message: dict, content: str) -> str:
    calls = message.get("tool_calls") or []
    texts = []
    for j, call in enumerate(calls):
        call = call.get("function", call)
        arguments = call["arguments"]
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        separator = "\n" if (j > 0 or content) else ""
        texts.append(f'{separator}{TOOL_CALL}\n{{"name": "{call["name"]}", "arguments": {arguments}}}\n{END_TOOL_CALL}')
    return "".join(texts)


def tool_call_text(name: str, arguments: dict) -> str:
    """One tool call exactly as Qwen3's template writes it (what the policy should emit)."""
    return _tool_calls_text({"tool_calls": [{"name": name, "arguments": arguments}]}, content="")


def render_chat(tokenizer, messages: Sequence[dict], tools: Sequence[dict] | None = None,
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``render_chat_text`` (control tokens are single ids, so this is also the template's ids)."""
    return tokenizer.encode(render_chat_text(messages, tools, add_generation_prompt), add_special_tokens=False)


def tool_response_ids(tokenizer, contents: Sequence[str], close_assistant_turn: bool = True) -> list[int]:
    """Ids to append after an assistant turn that ended with ``</tool_call>``: token-in / token-out.

    ``close_assistant_turn``: add the ``<|im_end|>`` that ends the assistant turn (False when the policy already
    sampled it). Then one user turn holding one ``<tool_response>`` block per content, then a fresh assistant
    turn. These ids are observations: the rollout gives them loss mask 0.
    """
    responses = "".join(f"\n{TOOL_RESPONSE}\n{c}\n{END_TOOL_RESPONSE}" for c in contents)
    text = (f"{IM_END}\n" if close_assistant_turn else "\n") + f"{IM_START}user{responses}{IM_END}\n"
    return tokenizer.encode(text + f"{IM_START}assistant\n", add_special_tokens=False)


# Qwen3-4B-Instruct-2507's chat template (Apache-2.0, Qwen team), stored with the preset tokenizer so that
# transformers' apply_chat_template renders the preset's conversations exactly as render_chat does.
QWEN3_CHAT_TEMPLATE = (Path(__file__).parent / "qwen3_chat_template.jinja").read_text()
