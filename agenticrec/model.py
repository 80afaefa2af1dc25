"""The Qwen3 decoder, written out by hand, and its Hugging Face checkpoint I/O.

A token's path through the model:

    ids [B, T] -> embed_tokens -> N x DecoderLayer -> norm (RMSNorm) -> lm_head -> logits [B, T, V]

    DecoderLayer:  x = x + Attention(RMSNorm(x))
                   x = x + MLP(RMSNorm(x))

    Attention:     q, k, v = Wq x, Wk x, Wv x            (GQA: fewer k/v heads than q heads)
                   q, k    = RMSNorm_head(q), RMSNorm_head(k)   (Qwen3's per-head q_norm / k_norm)
                   q, k    = RoPE(q), RoPE(k)            (rotate-half convention, theta from config)
                   o       = Wo softmax(q k^T / sqrt(head_dim) + causal) v

    MLP (SwiGLU):  down(silu(gate(x)) * up(x))

Module names mirror Hugging Face's ``Qwen3ForCausalLM`` (``model.layers.3.self_attn.q_proj.weight``, ...), so our
``state_dict`` keys *are* the checkpoint keys and loading needs no renaming table.

KV cache convention (used by ``agenticrec.engine``): slot ``j`` of a row's cache holds the token at absolute
position ``j``. A query at position ``p`` may attend to slots ``0..p``. That one rule gives the right mask for
prefill, one-token decode and multi-token chunks appended to a cache alike, which the built-in ``is_causal=True``
does not: it aligns the triangle top-left, so with 2 queries over 5 keys query 0 would see only key 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from agenticrec import safetensors_io
from agenticrec.safetensors_io import CheckpointError

__all__ = ["Qwen3Config", "Qwen3", "CheckpointError", "load_pretrained", "save_pretrained", "causal_mask",
           "attention_mask"]


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen3Config:
    """The fields of a Hugging Face Qwen3 ``config.json`` that change the computation."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # read from config.json, never hidden_size // heads (Qwen3-0.6B: 1024 hidden, 16 heads, 128)
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"config: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                                  f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise CheckpointError(f"config: head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_hf(cls, hf: dict) -> "Qwen3Config":
        """Validate a Hugging Face config dict and keep what the computation needs; reject anything not Qwen3."""
        if hf.get("model_type") != "qwen3":
            raise CheckpointError(f"config: model_type is {hf.get('model_type')!r}, expected 'qwen3' "
                                  "(this loader implements the Qwen3 decoder only)")
        if hf.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"config: hidden_act is {hf['hidden_act']!r}; Qwen3 uses 'silu'")
        if hf.get("use_sliding_window"):
            raise CheckpointError("config: use_sliding_window is true; sliding-window attention is not implemented")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"config: rope type {rope_type!r} is not implemented (only 'default' RoPE)")
        theta = hf.get("rope_theta", rope.get("rope_theta"))
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim"]
        missing = [k for k in required if hf.get(k) is None] + ([] if theta is not None else ["rope_theta"])
        if missing:
            raise CheckpointError(f"config: missing required field(s) {', '.join(missing)}")
        fields = {k: hf[k] for k in cls.__dataclass_fields__ if k in hf and k != "rope_theta"}
        return cls(**fields, rope_theta=float(theta))

    def to_hf(self, dtype: torch.dtype) -> dict:
        """A config.json that both transformers 4.51+ (rope_theta) and 5.x (rope_parameters) read unchanged."""
        dtype_name = str(dtype).removeprefix("torch.")
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **asdict(self),
            "hidden_act": "silu",
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "torch_dtype": dtype_name,
            "dtype": dtype_name,
        }

    @property
    def num_parameters(self) -> int:
        d, h, kv, hd, f, v = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim,
                              self.intermediate_size, self.vocab_size)
        bias = (h + 2 * kv) * hd + d if self.attention_bias else 0
        layer = d * (h + 2 * kv) * hd + bias + h * hd * d + 3 * d * f + 2 * d + 2 * hd
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + d


# --------------------------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in fp32 and cast back before the gain (as Hugging Face does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # one fused kernel: decoding is op-bound
        return self.weight * normed.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, T, head_dim] for absolute positions [B, T]; angle_i = pos / theta^(2i / head_dim), in fp32."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # [head_dim / 2]
    angles = positions[..., None].float() * inv_freq  # [B, T, head_dim / 2]
    angles = torch.cat((angles, angles), dim=-1)  # rotate-half pairs dim i with dim i + head_dim / 2
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated by RoPE (rotate-half convention: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin))."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def causal_mask(positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Boolean mask [B, 1, T, kv_len]: query at absolute position p sees cache slots 0..p (True = attend).

    Because slot j holds position j, this is the bottom-right-aligned causal mask for any chunk appended to a
    cache, per row, even when rows sit at different offsets.
    """
    slots = torch.arange(kv_len, device=positions.device)
    return (slots[None, None, :] <= positions[:, :, None])[:, None]


@dataclass(frozen=True)
class LowerRightCausal:
    """The bottom-right causal triangle of ``q_len`` queries over ``kv_len`` slots. A plain value that becomes
    torch's ``causal_lower_right`` bias at the attention call: that bias is a tensor subclass, which FSDP's input
    casting (a decoder layer's forward hook) would try to cast."""

    q_len: int
    kv_len: int


def attention_mask(positions: torch.Tensor, kv_len: int) -> torch.Tensor | LowerRightCausal | None:
    """What attention over cache slots 0..kv_len-1 needs for queries at ``positions`` [B, T] (each sees slots
    0..its position), in the form the fused kernels take, not a dense mask where it can be helped:

    - None: every row starts at 0 (kv_len == T): plain causal attention (``is_causal=True``);
    - ``LowerRightCausal(T, kv_len)``: every row's queries are the last T slots (a continuation of a shared
      prefix, ``policy.group_logprobs``; a decode step of rows of equal length): the bottom-right triangle as a
      structure that the flash kernel takes (no [B, H, T, kv_len] scores);
    - [B, 1, 1, kv_len] (T == 1, rows at ragged lengths: a decode step): each row's valid slots, which
      ``Attention`` broadcasts over the query heads of each KV head (GQA folded, no K/V repetition);
    - [B, 1, T, kv_len] (chunks appended at ragged offsets: forced tool responses): ``causal_mask``.
    """
    T = positions.shape[1]
    if kv_len == T:
        return None
    if bool((positions[:, 0] == kv_len - T).all()):
        return LowerRightCausal(T, kv_len)
    return causal_mask(positions, kv_len)


class KVCache(Protocol):
    """What attention needs from a cache (``agenticrec.engine`` provides the preallocated implementation). A cache
    may also carry ``static_len``: then attention reads all of its slots (``Qwen3.hidden_states``)."""

    def update(self, layer_idx: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, T, D] at slots ``positions`` [B, T]; return slots [0, kv_len) as [B, Hkv, kv_len, D]."""
        ...


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)  # over each head's vector, before RoPE
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, kv_cache: KVCache | None, kv_len: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # [B, H, T, D]
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        # under autocast the norms give fp32 and the projections bf16: one dtype, as SDPA would cast them (the
        # lower-right causal bias checks dtypes before SDPA's autocast runs)
        q, k = apply_rotary(q, cos, sin).to(v.dtype), apply_rotary(k, cos, sin).to(v.dtype)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, positions, k, v, kv_len)  # [B, Hkv, kv_len, D]
        if T == 1 and isinstance(mask, torch.Tensor) and self.n_heads != self.n_kv_heads:
            out = self.folded_decode(q, k, v, mask)
        else:
            if isinstance(mask, LowerRightCausal):
                mask = causal_lower_right(mask.q_len, mask.kv_len)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def folded_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One query per row, q [B, H, 1, D], over k, v [B, Hkv, S, D] with each row's valid slots mask
        [B, 1, 1, S]: query head h reads KV head h // g (g = H / Hkv), so the g query heads of one KV head are g
        queries of one [g, S] attention. Equal heads on both sides: no K/V repetition, and a kernel that takes a
        mask but not GQA (memory-efficient) takes it."""
        B, H, _, D = q.shape
        folded = q.reshape(B, self.n_kv_heads, H // self.n_kv_heads, D)  # [B, Hkv, g, D]
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask)  # the mask broadcasts over the g queries
        return out.reshape(B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, positions, mask, kv_cache, kv_len):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask, kv_cache, kv_len)
        return x + self.mlp(self.post_attention_layernorm(x))


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class Qwen3(nn.Module):
    """Qwen3 causal LM. ``model(ids)`` -> logits [B, T, V]; ``model.hidden_states(ids)`` -> [B, T, hidden]."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False  # recompute each layer in the backward pass (training long contexts)
        # bf16 mixed precision over fp32 weights in one process (autocast; FSDP's MixedPrecisionPolicy does it
        # under torchrun): None = compute in the weights' dtype. Set by agenticrec.distributed.shard.
        self.compute_dtype: torch.dtype | None = None
        self.tie_weights()
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def tie_weights(self) -> None:
        """Share one tensor between the embedding and the LM head when the config ties them."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init as Hugging Face does it: N(0, initializer_range) for matrices, ones for norms, zero biases."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, T, hidden] for input_ids [B, T].

        positions [B, T]: absolute position of each token, consecutive within a row (default 0..T-1). With a
        ``kv_cache`` the tokens are written to the cache slots named by ``positions`` and attend to slots
        0..position, in the form ``attention_mask`` picks (plain causal when every row starts at 0, which lets
        SDPA skip the masked half). A cache with a ``static_len`` (the engine's fixed-shape decode step) is read
        whole, every slot masked per row, so that no shape depends on the data. Without a cache: causal attention
        over the T tokens (right padding is harmless: it comes last).
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.model["embed_tokens"](input_ids)
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask, kv_len = None, T
        if getattr(kv_cache, "static_len", None) is not None:  # a fixed-shape step: every slot, masked per row
            kv_len = kv_cache.static_len
            mask = causal_mask(positions, kv_len)
        elif kv_cache is not None:
            kv_len = int(positions.max()) + 1  # attend over the used prefix of the preallocated cache only
            mask = attention_mask(positions, kv_len)
        for layer in self.model["layers"]:
            if self.activation_checkpointing and torch.is_grad_enabled():  # keep only layer inputs for backward
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, positions, mask, kv_cache, kv_len,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, positions, mask, kv_cache, kv_len)
        return self.model["norm"](x)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                *, last_index: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                target_mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Logits [B, T, V]; or, with ``last_index`` [B], the logits at one position per row [B, V] (generation);
        or, with ``targets`` [B, T], log softmax(logits / temperature) of each target id [B, T] (training), computed
        in chunks so that the [B, T, V] logits never exist at once; ``target_mask`` [B, T] restricts the LM head
        to the positions that matter (0 elsewhere: a loss over sampled tokens needs no logits for observations).
        Everything runs inside ``forward`` so that FSDP's hooks gather the embedding, final norm and LM head too."""
        # under FSDP the weights seen here are already the gathered, cast parameters: no autocast
        if self.compute_dtype is not None and self.compute_dtype != self.model["norm"].weight.dtype:
            with torch.autocast(input_ids.device.type, dtype=self.compute_dtype):
                return self._forward(input_ids, positions, kv_cache, last_index, targets, target_mask, temperature)
        return self._forward(input_ids, positions, kv_cache, last_index, targets, target_mask, temperature)

    def _forward(self, input_ids, positions, kv_cache, last_index, targets, target_mask, temperature):
        hidden = self.hidden_states(input_ids, positions, kv_cache)
        if last_index is not None:
            return self.lm_head(hidden[torch.arange(len(hidden), device=hidden.device), last_index])
        if targets is not None and target_mask is not None:
            out = hidden.new_zeros(targets.shape, dtype=torch.float)
            out[target_mask] = token_logprobs(self.lm_head, hidden[target_mask][None], targets[target_mask][None],
                                              temperature)[0]
            return out
        if targets is not None:
            return token_logprobs(self.lm_head, hidden, targets, temperature)
        return self.lm_head(hidden)


LOGPROB_CHUNK = 256  # positions per chunk of the LM head in token_logprobs


def token_logprobs(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(lm_head(hidden) / T)[target] per position [B, T], in chunks of LOGPROB_CHUNK positions; under
    autograd each chunk is recomputed in the backward pass instead of keeping its [B, chunk, V] logits alive."""
    from torch.utils.checkpoint import checkpoint

    def chunk_logprobs(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h).float() / temperature
        return logits.log_softmax(-1).gather(-1, t[..., None])[..., 0]

    pieces = []
    for start in range(0, hidden.shape[1], LOGPROB_CHUNK):
        h, t = hidden[:, start:start + LOGPROB_CHUNK], targets[:, start:start + LOGPROB_CHUNK]
        pieces.append(checkpoint(chunk_logprobs, h, t, use_reentrant=False) if torch.is_grad_enabled()
                      else chunk_logprobs(h, t))
    return torch.cat(pieces, dim=1)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint I/O (Hugging Face layout: config.json + model.safetensors or a sharded index)
# --------------------------------------------------------------------------------------------------------------------

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # Hugging Face's default shard size


def read_config(path: str | Path) -> Qwen3Config:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: not found (expected a Hugging Face model folder)")
    try:
        hf = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return Qwen3Config.from_hf(hf)


def expected_shapes(model: Qwen3) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape. A tied lm_head is the embedding, so it is not a key of its own."""
    return {name: tuple(p.shape) for name, p in model.named_parameters()}  # yields a tied tensor once, first name


@torch.no_grad()
def load_pretrained(path: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None) -> Qwen3:
    """Load a Hugging Face Qwen3 folder into our model, straight into ``dtype`` on ``device``.

    dtype None keeps the dtype the weights are stored in. Parameters are allocated once in the target dtype and
    filled tensor by tensor from the file (``safetensors_io.load_into``), so peak memory is the model plus one
    tensor, never a full fp32 copy. Raises ``CheckpointError`` with one line naming the problem for a non-Qwen3
    config, missing / unexpected keys, shape mismatches and truncated or corrupt files.
    """
    path = Path(path)
    cfg = read_config(path)
    tensors = safetensors_io.read_checkpoint_index(path, WEIGHTS_NAME, INDEX_NAME)  # key -> (file, TensorInfo)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints carry a redundant copy; the embedding wins
    with torch.device("meta"):
        model = Qwen3(cfg)
    shapes = expected_shapes(model)
    _check_keys_and_shapes(path, shapes, {k: info.shape for k, (_, info) in tensors.items()})
    if dtype is None:
        dtype = safetensors_io.common_dtype([info for _, info in tensors.values()], path)
    model = model.to(dtype).to_empty(device=device or "cpu")
    model.tie_weights()  # to_empty made fresh tensors: re-share the embedding and the head
    safetensors_io.load_into(tensors, {name: p.data for name, p in model.named_parameters()})
    return model


def _check_keys_and_shapes(path: Path, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {_short_list(missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key(s) {_short_list(unexpected)}")
    for key, shape in expected.items():
        if tuple(found[key]) != shape:
            raise CheckpointError(f"{path}: shape mismatch for {key}: checkpoint has {list(found[key])}, "
                                  f"config.json implies {list(shape)}")


def _short_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@torch.no_grad()
def save_pretrained(model: Qwen3, path: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json + safetensors (sharded with an index above ``max_shard_bytes``), atomically.

    ``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads the result unchanged. ``state_dict`` lets a
    distributed caller pass the gathered full weights. The folder is built under a temporary name and renamed into
    place, so ``path`` is either the old checkpoint or the complete new one, never a torn folder.
    """
    cfg = model.config
    state = dict(state_dict if state_dict is not None else model.state_dict())
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # HF convention: the tied head is not stored
    dtype = next(iter(state.values())).dtype
    return safetensors_io.write_checkpoint(Path(path), state, cfg.to_hf(dtype), max_shard_bytes,
                                           WEIGHTS_NAME, INDEX_NAME)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
