"""Deterministic stand-ins for the trainer tests: a tiny HF-format policy folder and synthetic rollout groups
with varied rewards (a random policy's rollouts are all invalid, so they would never move the weights)."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from agenticrec.agent import Trajectory
from agenticrec.data import load_dataset
from agenticrec.model import Qwen3, Qwen3Config, save_pretrained
from agenticrec.preset import preset_tokenizer
from agenticrec.trainer import GroupBatch

VOCAB = 600


def tiny_config() -> Qwen3Config:
    return Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)


def tiny_policy_folder(folder: Path, config: Qwen3Config | None = None) -> Path:
    """A random tiny Qwen3 (``tiny_config()`` unless given) with the preset BPE tokenizer (trained on beauty2023
    titles), as an HF folder."""
    tokenizer = preset_tokenizer(load_dataset("beauty2023"), folder / "tokenizer", vocab_size=VOCAB)
    torch.manual_seed(0)
    cfg = config or tiny_config()
    assert len(tokenizer) <= cfg.vocab_size
    save_pretrained(Qwen3(cfg), folder / "model")
    for file in (folder / "tokenizer").iterdir():
        (folder / "model" / file.name).write_bytes(file.read_bytes())
    return folder / "model"


def synthetic_group(instance, step: int, group_size: int, key: int, one_token: bool = False) -> list[Trajectory]:
    """A group whose ids, masks and rewards depend only on (instance, step, key); ``one_token``: every continuation
    is one sampled token (a policy that stops at once)."""
    digest = hashlib.sha256(repr((instance.user, instance.target, step, key)).encode()).hexdigest()
    g = torch.Generator().manual_seed(int(digest[:8], 16))  # not hash(): it is salted per process
    prompt = torch.randint(0, VOCAB, (int(torch.randint(5, 12, (1,), generator=g)),), generator=g).tolist()
    group = []
    for _ in range(group_size):
        n = 1 if one_token else int(torch.randint(2, 9, (1,), generator=g))
        continuation = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        mask = [0] * len(prompt) + ([1] if one_token else [int(b) for b in (torch.rand(n, generator=g) < 0.7).tolist()])
        t = Trajectory(instance, 0, prompt + continuation, mask, [0.0] * len(mask), len(prompt))
        t.reward = float([-1.0, -0.5, 0.4, 1.1][int(torch.randint(0, 4, (1,), generator=g))])
        t.invalid_reason = "no_action" if t.reward == -1.0 else None
        group.append(t)
    return group


def fake_collect_groups(rollout, stream, sampling, step, info):
    """Drop-in for agenticrec.trainer.collect_groups: consumes the data stream like the real one."""
    instances = stream.take(sampling.groups_per_rank)
    groups = [synthetic_group(x, step, sampling.group_size, stream.position) for x in instances]
    return GroupBatch(groups, [1.0] * len(groups), [t for g in groups for t in g])


WORKER = str(Path(__file__).resolve().parent / "dist_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(script_and_args: list[str], ranks: int, port: int = 29500, timeout: float = 240, env: dict | None = None):
    """``script_and_args`` under torchrun with ``ranks`` gloo ranks: (exit code, stderr). A hang fails the test: after
    ``timeout`` seconds the whole process group (torchrun and its ranks) is killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port),
           *script_and_args]
    run = subprocess.Popen(cmd, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        _, stderr = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        raise AssertionError(f"{script_and_args[0]} with {ranks} gloo ranks did not finish in {timeout} s (a hang)") \
            from None
    return run.returncode, stderr


def run_worker(out: Path, mode: str, ranks: int, env: dict | None = None) -> None:
    """tests/dist_worker.py in ``mode`` under ``torchrun``; it writes ``out``."""
    for attempt in range(3):  # gloo can abort at exit after success; the worker exits with os._exit to avoid it
        _, stderr = torchrun([WORKER, str(out), mode], ranks, port=29500 + attempt, env=env)
        if out.exists():
            break
    assert out.exists(), stderr[-2000:]


def worker_weights(tmp_path: Path, objective: str, ranks: int) -> tuple[dict, dict]:
    """Final weights of tests/dist_worker.py run in one process and under torchrun with ``ranks`` gloo ranks."""
    one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
    subprocess.run([sys.executable, WORKER, str(one), objective], check=True, env=ENV, timeout=300)
    run_worker(many, objective, ranks)
    one, many = load_file(one), load_file(many)
    assert one.keys() == many.keys()
    return one, many
