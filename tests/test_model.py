"""The hand-written Qwen3 against transformers' Qwen3ForCausalLM, and the checkpoint I/O contract."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config as HFQwen3Config
from transformers import Qwen3ForCausalLM

from agenticrec.model import (Attention, CheckpointError, LowerRightCausal, Qwen3, Qwen3Config, attention_mask,
                              causal_mask, load_pretrained, rotary_cos_sin, save_pretrained)


def hf_model(seed=0, **overrides) -> Qwen3ForCausalLM:
    kwargs = dict(vocab_size=257, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=20, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(HFQwen3Config(**kwargs)).eval()
    with torch.no_grad():  # HF inits norms to 1; randomise them so a swapped or skipped norm cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def max_logit_diff(ours: Qwen3, theirs: Qwen3ForCausalLM, ids: torch.Tensor) -> float:
    return (ours(ids) - theirs(ids).logits).abs().max().item()


@st.composite
def qwen3_configs(draw):
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 4))  # GQA ratio 1-4
    hidden = draw(st.sampled_from([32, 48, 64]))
    head_dim = draw(st.sampled_from([d for d in range(16, 66, 2) if d * heads != hidden]))
    return dict(vocab_size=draw(st.integers(64, 300)), hidden_size=hidden,
                intermediate_size=draw(st.sampled_from([40, 64, 96])),
                num_hidden_layers=draw(st.integers(1, 4)), num_attention_heads=heads, num_key_value_heads=kv_heads,
                head_dim=head_dim, tie_word_embeddings=draw(st.booleans()),
                rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
                rope_parameters={"rope_type": "default",
                                 "rope_theta": draw(st.sampled_from([100.0, 10_000.0, 1e6, 5e6]))})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=qwen3_configs(), batch=st.integers(2, 3), length=st.integers(64, 80), seed=st.integers(0, 2**16))
def test_logits_match_transformers_for_random_configs(tmp_path_factory, cfg, batch, length, seed):
    theirs = hf_model(seed, **cfg)
    folder = tmp_path_factory.mktemp("hf")
    theirs.save_pretrained(folder)
    ours = load_pretrained(folder).eval()
    assert ours.config.head_dim == cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]
    assert (ours.lm_head.weight is ours.model["embed_tokens"].weight) == cfg["tie_word_embeddings"]
    ids = torch.randint(0, cfg["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
    assert max_logit_diff(ours, theirs, ids) <= 1e-5


def test_our_save_loads_in_transformers_with_identical_logits(tmp_path):
    theirs = hf_model(tie_word_embeddings=True)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    save_pretrained(ours, tmp_path / "ours")
    reloaded = Qwen3ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, 257, (2, 64))
    assert max_logit_diff(ours, reloaded, ids) <= 1e-5
    assert reloaded.config.rope_parameters["rope_theta"] == 10_000.0
    assert reloaded.config.head_dim == 20


@pytest.mark.parametrize("tied", [True, False])
def test_sharded_checkpoints_load_both_ways(tmp_path, tied):
    theirs = hf_model(tie_word_embeddings=tied)
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_pretrained(tmp_path / "hf")
    save_pretrained(ours, tmp_path / "ours", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert ("lm_head.weight" in index["weight_map"]) == (not tied)
    ids = torch.randint(0, 257, (2, 64))
    assert max_logit_diff(ours, Qwen3ForCausalLM.from_pretrained(tmp_path / "ours").eval(), ids) <= 1e-5
    assert max_logit_diff(load_pretrained(tmp_path / "ours"), theirs, ids) <= 1e-5


def test_tied_checkpoint_with_redundant_lm_head_loads(tmp_path):
    from safetensors.torch import load_file, save_file
    theirs = hf_model(tie_word_embeddings=True)
    theirs.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in state
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = load_pretrained(tmp_path)
    assert ours.lm_head.weight is ours.model["embed_tokens"].weight
    assert max_logit_diff(ours, theirs, torch.randint(0, 257, (2, 64))) <= 1e-5


def test_save_replaces_an_existing_folder_atomically(tmp_path):
    ours = load_pretrained(_saved(tmp_path / "hf"))
    target = tmp_path / "ckpt"
    save_pretrained(ours, target)
    (target / "stale.txt").write_text("from the previous save")
    with torch.no_grad():
        ours.model["norm"].weight.mul_(2)
    save_pretrained(ours, target)
    assert not (target / "stale.txt").exists()  # the folder was swapped whole, not patched in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # no temp or old folders left behind
    assert torch.equal(load_pretrained(target).model["norm"].weight, ours.model["norm"].weight)


def test_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    ours = load_pretrained(_saved(tmp_path / "hf"))
    target = save_pretrained(ours, tmp_path / "ckpt")
    before = (target / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("agenticrec.safetensors_io.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(ours, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]


def _saved(folder, **overrides):
    hf_model(**overrides).save_pretrained(folder)
    return folder


def _one_line_error(folder) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_file_is_rejected(tmp_path):
    file = _saved(tmp_path) / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    assert "truncated" in _one_line_error(tmp_path)


def test_corrupt_header_is_rejected(tmp_path):
    file = _saved(tmp_path) / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:40] = b"\x00garbage, not json at all......."
    file.write_bytes(bytes(data))
    assert "corrupt header" in _one_line_error(tmp_path)


def test_random_bytes_are_rejected(tmp_path):
    file = _saved(tmp_path) / "model.safetensors"
    file.write_bytes(os.urandom(4096))
    assert "model.safetensors" in _one_line_error(tmp_path)


def test_missing_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    file = _saved(tmp_path) / "model.safetensors"
    state = load_file(file)
    del state["model.layers.1.self_attn.k_norm.weight"]
    save_file(state, file, metadata={"format": "pt"})
    assert "missing key(s) model.layers.1.self_attn.k_norm.weight" in _one_line_error(tmp_path)


def test_unexpected_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    file = _saved(tmp_path) / "model.safetensors"
    state = load_file(file)
    state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(2)
    save_file(state, file, metadata={"format": "pt"})
    assert "unexpected key(s) model.layers.7.mlp.up_proj.weight" in _one_line_error(tmp_path)


def test_shape_mismatch_is_named(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["head_dim"] = 16  # the weights were written with head_dim 20
    (folder / "config.json").write_text(json.dumps(config))
    message = _one_line_error(folder)
    assert "shape mismatch for model.layers.0.self_attn.q_proj.weight" in message
    assert "[80, 48]" in message and "[64, 48]" in message


def test_non_qwen3_config_is_rejected(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    assert "model_type is 'llama', expected 'qwen3'" in _one_line_error(folder)


@pytest.mark.parametrize("change, expected", [
    ({"head_dim": None}, "missing required field(s) head_dim"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
    ({"use_sliding_window": True}, "sliding-window attention is not implemented"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
])
def test_unsupported_config_fields_are_rejected(tmp_path, change, expected):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    assert expected in _one_line_error(folder)


def test_missing_folder_contents_are_named(tmp_path):
    assert "config.json: not found" in _one_line_error(tmp_path)
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "neither model.safetensors nor model.safetensors.index.json found" in _one_line_error(tmp_path)


def test_sharded_index_pointing_at_a_missing_shard_is_named(tmp_path):
    hf_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    assert f"lists shard {shard.name}, which is missing" in _one_line_error(tmp_path)


def test_bf16_load_keeps_bf16_and_matches_fp32(tmp_path):
    theirs = hf_model(tie_word_embeddings=True)
    theirs.save_pretrained(tmp_path)  # stored in fp32
    ours = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, 257, (2, 64))
    with torch.no_grad():
        ref = theirs(ids).logits
        diff = (ours(ids).float() - ref).abs().max().item()
    assert diff < 0.1 * ref.abs().max().item()  # bf16 rounding, not a different computation


def test_bf16_load_makes_no_fp32_copy_of_the_model(tmp_path):
    """Peak RSS of loading an fp32 checkpoint as bf16 stays near the bf16 model size, measured in a clean process.
    A full fp32 copy on the way would add 2x the bf16 size."""
    hf_model(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=24, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, tie_word_embeddings=False).save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import torch
        from agenticrec.model import Qwen3, Qwen3Config, load_pretrained
        def hwm(): return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
        with torch.device("meta"):  # torch's one-off lazy initialisation (~75 MB) must not count as the load
            Qwen3(Qwen3Config(8, 8, 8, 1, 1, 1, 8))
        before = hwm()
        model = load_pretrained({str(tmp_path)!r}, dtype=torch.bfloat16)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        print(hwm() - before, size, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    peak_increase, bf16_bytes = map(int, out.split())
    assert bf16_bytes > 30e6
    assert peak_increase < 1.3 * bf16_bytes, (peak_increase, bf16_bytes)


def test_causal_mask_is_bottom_right_aligned_for_appended_chunks():
    q_len, kv_len = 3, 7
    positions = torch.arange(kv_len - q_len, kv_len)[None]  # a 3-token chunk appended after 4 cached tokens
    mask = causal_mask(positions, kv_len)[0, 0]
    assert torch.equal(mask, torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len))
    # is_causal=True's top-left triangle would hide cached tokens from the first query:
    assert not torch.equal(mask, torch.ones(q_len, kv_len, dtype=torch.bool).tril())


class Slots:
    """A cache whose slot j holds position j, as the engine's: [B, Hkv, S, D] keys and values."""

    def __init__(self, k, v):
        self.k, self.v = k, v

    def update(self, layer_idx, positions, k, v, kv_len):
        rows = torch.arange(len(positions))[:, None]
        self.k[rows, :, positions], self.v[rows, :, positions] = k.transpose(1, 2), v.transpose(1, 2)
        return self.k[:, :, :kv_len], self.v[:, :, :kv_len]


def attention_by_hand(attn, x, cos, sin, positions, k_cache, v_cache):
    """softmax(q k^T / sqrt(D) + mask) v written out: query head h reads KV head h // (H / Hkv); a query at
    position p sees slots 0..p."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_norm(attn.q_proj(x).view(B, T, H, D)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, T, Hkv, D)).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)

    def rotate(t):  # rotate-half RoPE
        return t * cos[:, None] + torch.cat((-t[..., D // 2:], t[..., :D // 2]), -1) * sin[:, None]

    q, k = rotate(q), rotate(k)
    keys, values = k_cache.clone(), v_cache.clone()
    for b in range(B):
        keys[b, :, positions[b]], values[b, :, positions[b]] = k[b], v[b]
    kv_len = int(positions.max()) + 1
    keys = keys[:, :, :kv_len].repeat_interleave(H // Hkv, 1)  # [B, H, kv_len, D]
    values = values[:, :, :kv_len].repeat_interleave(H // Hkv, 1)
    scores = q @ keys.transpose(-1, -2) / D ** 0.5  # [B, H, T, kv_len]
    visible = torch.arange(kv_len)[None, None, None] <= positions[:, None, :, None]
    out = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ values
    return attn.o_proj(out.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("case, starts, T, kind", [
    ("a continuation of a shared prefix (policy)", [30, 30, 30], 10, LowerRightCausal),
    ("a decode step at ragged lengths", [39, 20, 7], 1, "rows"),
    ("a decode step at equal lengths", [25, 25, 25], 1, LowerRightCausal),
    ("forced chunks at ragged offsets", [35, 10, 0], 5, "dense"),
    ("a prefill", [0, 0, 0], 12, None),
])
def test_every_attention_path_equals_attention_written_out(case, starts, T, kind):
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=16)
    attn, B, S = Attention(cfg, 0), len(starts), 48
    positions = torch.tensor(starts)[:, None] + torch.arange(T)
    kv_len = int(positions.max()) + 1
    mask = attention_mask(positions, kv_len)
    if kind is None or kind is LowerRightCausal:
        assert mask == (None if kind is None else LowerRightCausal(T, kv_len))
    else:  # the decode step's [B, 1, 1, kv_len] rows, or the dense [B, 1, T, kv_len]
        assert torch.equal(mask, causal_mask(positions, kv_len)) and mask.shape[2] == (1 if kind == "rows" else T)
    x = torch.randn(B, T, cfg.hidden_size)
    k_cache, v_cache = torch.randn(2, B, cfg.num_key_value_heads, S, cfg.head_dim)
    cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
    with torch.no_grad():
        ours = attn(x, cos, sin, positions, mask, Slots(k_cache.clone(), v_cache.clone()), kv_len)
        expected = attention_by_hand(attn, x, cos, sin, positions, k_cache, v_cache)
    assert (ours - expected).abs().max() <= 1e-5, case


def test_config_parameter_count_matches_the_module():
    for tied in (True, False):
        cfg = Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, tie_word_embeddings=tied,
                          attention_bias=True)
        assert cfg.num_parameters == sum(p.numel() for p in Qwen3(cfg).parameters())
