"""The recipe's GPU facts that no CPU run can show, on one GPU in at most ~8 minutes.

    python benchmarks/gpu_check.py [--config .../Qwen3-4B-Instruct-2507/config.json] [--layers 36]

A Qwen3-4B-shaped model with random bf16 weights. For each attention setting (cuDNN SDPA off, which mimics
A100 / A800 where PyTorch does not prefer it, then PyTorch's default), it prints:
- decode calls (32 rows, about 3,000 cached tokens each, ``Engine.feed``), at ragged lengths (GQA folded over a
  valid-slot mask, ``Attention.folded_decode``) and at equal lengths (the lower-right causal bias): the SDPA
  backends that accept the attention call (and PyTorch's choice), ms per decode step, ``max_memory_allocated``;
- the update's continuation pass (``policy.group_logprobs``, G 8, prompt 1,050, continuations of 1,000 / 3,000 /
  5,000 tokens, activation checkpointing, forward + backward; the lower-right causal bias): the same three
  figures. No call may end on the MATH backend: it materialises the [G, H, Lc, P + Lc] scores;
the decode step in the engine's three forms (``Engine(decode=...)``: dynamic eager, static as a CUDA graph, compiled
as a CUDA graph), 32 rows of ~3,000 prompt tokens, 64 greedy tokens each: ms per decode step and how many rows
give the dynamic step's tokens (bf16: the static step reads every slot, so a near-tie may break differently);
and the dtype of the rollout copy ``distributed.refresh_rollout_copy`` builds from fp32 master weights computing
in bf16. Memory is reset between measurements; an out-of-memory is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from agenticrec import distributed as D
from agenticrec import model as M
from agenticrec.engine import DECODE_MODES, Engine, SamplingParams
from agenticrec.model import Qwen3, Qwen3Config
from agenticrec.policy import group_logprobs

DEFAULT = Path(__file__).resolve().parents[1] / "tests/fixtures/qwen3_tokenizer/Qwen3-4B-Instruct-2507/config.json"
BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


class RecordedCall:
    """The arguments of the last masked SDPA call the model made (what the kernel choice depends on)."""

    def __init__(self):
        self.args, self.real = None, F.scaled_dot_product_attention

    def __call__(self, q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            self.args = (q.detach(), k.detach(), v.detach(), attn_mask, kw)
        return self.real(q, k, v, attn_mask=attn_mask, **kw)

    def backends(self) -> str:
        """Which backends run the recorded call alone, and PyTorch's choice among them (for the lower-right causal
        bias, the choice its own dispatch makes: flash, else memory-efficient, else a materialised mask)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.bias import CausalBias
        q, k, v, mask, kw = self.args
        if isinstance(mask, CausalBias):
            from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention
            params = SDPAParams(q, k, v, None, 0.0, False, kw.get("enable_gqa", False))
            chosen = "FLASH_ATTENTION" if can_use_flash_attention(params) else \
                "EFFICIENT_ATTENTION" if can_use_efficient_attention(params) else "a materialised mask (MATH or other)"
            return f"lower-right causal bias [{tuple(q.shape)} over {k.shape[2]} slots]; chosen {chosen}"
        accepted = []
        for name in BACKENDS:
            try:
                with sdpa_kernel([getattr(SDPBackend, name)]):
                    self.real(q, k, v, attn_mask=mask, **kw)
                accepted.append(name)
            except RuntimeError:
                pass
        chosen = torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=None, enable_gqa=kw.get("enable_gqa", False))
        return f"[{tuple(q.shape)} over {k.shape[2]} slots, mask {tuple(mask.shape)}] accepted {accepted}; chosen " \
            f"{SDPBackend(chosen).name}"


def measure(fn, steps: int) -> tuple[float, float]:
    """(ms per call, max_memory_allocated GB) of ``fn`` run ``steps`` times after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated() / 1e9


def decode_check(model, recorder: RecordedCall, ragged: bool) -> str:
    engine, g = Engine(model, max_len=3100), torch.Generator().manual_seed(0)
    lengths = [2900 + 3 * i if ragged else 3000 for i in range(32)]
    engine.prefill([torch.randint(0, 1000, (n,), generator=g).tolist() for n in lengths])
    engine.feed([[5]] * 32)  # the decode step's own call (prefill's is plain causal: no mask recorded)
    ms, peak = measure(lambda: engine.feed([[5]] * 32), steps=20)
    return f"decode B 32 S ~3,000 ({'ragged' if ragged else 'equal'} lengths): {recorder.backends()}; " \
        f"{ms:.1f} ms/step; max allocated {peak:.1f} GB"


def continuation_check(model, recorder: RecordedCall, Lc: int) -> str:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (1050,), generator=g).tolist()
    continuations = [torch.randint(0, 1000, (Lc,), generator=g).tolist() for _ in range(8)]

    def step():
        model.zero_grad(set_to_none=True)
        group_logprobs(model, prompt, continuations, 0.6).sum().backward()
    try:
        ms, peak = measure(step, steps=2)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return f"continuation G 8 P 1,050 Lc {Lc}: out of memory"
    return f"continuation G 8 P 1,050 Lc {Lc:,}: {recorder.backends()}; {ms:.0f} ms fwd+bwd; max {peak:.1f} GB"


def decode_modes_check(model) -> list[str]:
    """ms per decode step of each decode mode: (time of 64 new tokens - time of 1) / 63, the prefill cancelled."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (2900 + 3 * i,), generator=g).tolist() for i in range(32)]
    lines, reference = [], None
    for mode in DECODE_MODES:
        engine = Engine(model, max_len=3100, decode=mode)
        seconds = {}
        for new in (1, 64, 64):  # the first run of 64 compiles (once per slot count); every call captures a graph
            torch.cuda.synchronize()
            start = time.perf_counter()
            rows = engine.run(prompts, SamplingParams(max_new_tokens=new))
            torch.cuda.synchronize()
            seconds[new] = time.perf_counter() - start
        tokens = [row.new_ids for row in rows]
        reference = reference or tokens
        same = sum(a == b for a, b in zip(tokens, reference))
        lines.append(f"decode step {mode}: {1000 * (seconds[64] - seconds[1]) / 63:.1f} ms/step at B 32, S ~3,000; "
                     f"{same}/32 rows give the dynamic step's 64 tokens")
    return lines


def rollout_copy_dtype(cfg: Qwen3Config) -> str:
    with torch.device("cuda"):
        master = Qwen3(cfg)  # fp32 master weights
    D.shard(master, D.DistInfo(0, 1, 0, torch.device("cuda"), None), torch.bfloat16)
    copy = D.refresh_rollout_copy(master, None, D.DistInfo(0, 1, 0, torch.device("cuda"), None))
    dtype = next(copy.parameters()).dtype
    del master, copy
    torch.cuda.empty_cache()
    return f"rollout copy built from fp32 master weights computing in bf16: {dtype}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT)
    parser.add_argument("--layers", type=int, default=0, help="decoder layers (0 = the config's)")
    args = parser.parse_args()
    hf = json.loads(args.config.read_text())
    hf["num_hidden_layers"] = args.layers or hf["num_hidden_layers"]
    cfg = Qwen3Config.from_hf(hf)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print(rollout_copy_dtype(cfg), flush=True)
    with torch.device("cuda"):
        model = Qwen3(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for line in decode_modes_check(model.eval()):
            print(line, flush=True)
    recorder = RecordedCall()  # after the compiled step: torch.compile cannot trace a call that records its arguments
    M.F.scaled_dot_product_attention = recorder
    for cudnn in (False, True):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        print(f"\n## cuDNN SDPA {'on (default)' if cudnn else 'off (as on A100 / A800)'}", flush=True)
        with torch.no_grad():
            for ragged in (True, False):
                print(decode_check(model.eval(), recorder, ragged), flush=True)
        model.train().activation_checkpointing = True
        for Lc in (1000, 3000, 5000):
            print(continuation_check(model, recorder, Lc), flush=True)


if __name__ == "__main__":
    main()
