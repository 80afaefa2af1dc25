"""The trainer's mechanics: 4 gloo ranks equal 1 process, resume is bit-exact, a crash while checkpointing
leaves the previous checkpoint loadable, and the whole loop runs end to end on real rollouts."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import train_grpo
from agenticrec.model import Qwen3, load_pretrained
from grpo_fakes import fake_collect_groups, tiny_config, tiny_policy_folder, worker_weights

HERE = Path(__file__).resolve().parent
SMALL = ["--dataset", "beauty2023", "--batch-size", "4", "--group-size", "2", "--max-turn-tokens", "8",
         "--max-context", "4096", "--eval-instances", "4", "--tools", "get_user_profile", "--threads", "1",
         "--profiles", "none", "--kl-coef", "0.01", "--lr", "1e-2", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy_folder(tmp_path_factory.mktemp("policy"))


def test_four_gloo_ranks_equal_one_process(tmp_path):
    one, four = worker_weights(tmp_path, "grpo", ranks=4)
    torch.manual_seed(0)
    start = Qwen3(tiny_config()).state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-4  # the two updates moved the weights
    assert max(float((one[k] - four[k]).abs().max()) for k in one) <= 1e-6


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_pretrained(out / "final").state_dict()


def test_resume_is_bit_exact(policy, tmp_path, monkeypatch):
    monkeypatch.setattr(train_grpo, "collect_groups", fake_collect_groups)
    args = ["--model", str(policy), *SMALL, "--steps", "6", "--checkpoint-every", "3"]
    train_grpo.main(args + ["--out", str(tmp_path / "straight")])
    train_grpo.main(args + ["--out", str(tmp_path / "resumed"), "--stop-after", "3"])
    assert not (tmp_path / "resumed" / "final").exists()
    train_grpo.main(args + ["--out", str(tmp_path / "resumed"), "--resume"])
    straight, resumed = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    start = load_pretrained(policy).state_dict()
    assert any(not torch.equal(straight[k], start[k]) for k in start)  # training moved the weights
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 6]


def test_crash_while_checkpointing_keeps_the_previous_checkpoint(policy, tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(HERE.parent)!r}, {str(HERE)!r}]
        import torch.distributed.checkpoint as dcp
        import train_grpo
        from grpo_fakes import fake_collect_groups
        train_grpo.collect_groups = fake_collect_groups
        real_save, calls = dcp.save, []
        def dying_save(state, checkpoint_id):
            calls.append(1)
            if len(calls) == 2:  # the second checkpoint: write part of it, then die like a killed process
                real_save(state, checkpoint_id=checkpoint_id)
                open(os.path.join(checkpoint_id, "__0_0.distcp"), "r+b").truncate(100)
                os._exit(9)
            real_save(state, checkpoint_id=checkpoint_id)
        dcp.save = dying_save
        train_grpo.main({["--model", str(policy), *SMALL, "--steps", "4", "--checkpoint-every", "2",
                         "--out", str(tmp_path / "run")]!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], timeout=300, capture_output=True, text=True)
    assert run.returncode == 9, run.stderr[-2000:]
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step_000002" and (root / "step_000004.tmp").exists()
    # the previous checkpoint loads, and training resumes from it
    resumed = subprocess.run([sys.executable, "-c", script.replace('"--steps", "4"', '"--steps", "4", "--resume"')
                              .replace("len(calls) == 2", "False")], timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [3, 4, 4]


def test_real_rollouts_run_end_to_end(policy, tmp_path):
    train_grpo.main(["--model", str(policy), *SMALL, "--steps", "2", "--out", str(tmp_path)])
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 2]
    step = records[1]
    for key in ("reward", "reward_std", "zero_std_groups", "valid", "truncated", "tool_calls", "tool_error_rate",
                "kl", "clip_frac", "grad_norm", "tokens_per_s", "rollout_s", "update_s", "dropped_groups",
                "padded_groups", "skipped_update"):
        assert key in step, key
    assert step["n"] >= 8 and step["valid"] == 0.0  # a random policy: every rollout invalid, every group dropped
    assert step["skipped_update"] and step["zero_std_groups"] == 1.0
    assert records[-1]["final"] and (tmp_path / "final" / "config.json").is_file()
