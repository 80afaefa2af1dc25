"""The trainer's mechanics: 4 gloo ranks equal 1 process, resume is bit-exact, a crash while checkpointing
leaves the previous checkpoint loadable, and the whole loop runs end to end on real rollouts."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_grpo
from agenticrec import trainer
from agenticrec.engine import Engine
from agenticrec.model import Qwen3, Qwen3Config, load_pretrained
from grpo_fakes import (VOCAB, fake_collect_groups, run_worker, tiny_config, tiny_policy_folder, torchrun,
                        worker_weights)

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


def test_one_token_groups_on_one_rank_run_the_same_passes(tmp_path):
    """Rank 0's groups are all one token long (a policy that stops at once), rank 1's are not: the continuation
    pass must still run on rank 0 (an FSDP forward is a collective), and the result equals one process."""
    one, two = worker_weights(tmp_path, "one_token", ranks=2)
    torch.manual_seed(0)
    start = Qwen3(tiny_config()).state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-4
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_process_at_lr_1e6_moves_the_weights_in_both_dtypes(tmp_path, monkeypatch, dtype):
    """10 GRPO steps at the paper's lr in one process, on the preset's architecture (random weights, synthetic
    groups): bf16 computes under autocast over fp32 master weights, so (as in fp32) nearly every weight moves;
    pure bf16 weights round ~98 % of the steps away."""
    from agenticrec.preset import PRESET_MODEL
    policy = tiny_policy_folder(tmp_path / "policy", Qwen3Config(vocab_size=VOCAB, **PRESET_MODEL))
    monkeypatch.setattr(train_grpo, "collect_groups", fake_collect_groups)
    trained = {}
    monkeypatch.setattr(train_grpo, "finish", lambda run: trained.update(
        {k: v.detach().clone() for k, v in run.model.state_dict().items()}))
    train_grpo.main(["--model", str(policy), *SMALL, "--steps", "10", "--lr", "1e-6", "--warmup-steps", "1",
                     "--dtype", dtype, "--out", str(tmp_path / "run")])
    start = load_pretrained(policy).state_dict()
    changed = sum(int((trained[k] != start[k].to(trained[k].dtype)).sum()) for k in start) / sum(
        v.numel() for v in start.values())  # against the start in the dtype the weights are kept in
    assert changed >= 0.95, changed
    assert all(trained[k].dtype == torch.float32 for k in start)  # the master weights


def test_the_paper_recipe_dry_run_runs_to_the_end_in_bf16(policy, tmp_path):
    """The recipe's code path on CPU: a random Hugging Face checkpoint, --dtype bfloat16, 2 gloo ranks, all seven
    tools, context 6,144, LLM profiles, activation checkpointing. Every rank exits 0; rollouts (the copy and its KV
    cache) and the reference are bf16 while the trained weights stay fp32; the export is bf16 and loads in
    transformers."""
    out = tmp_path / "run"
    code, stderr = torchrun([str(HERE / "dist_recipe.py"), "--model", str(policy), "--dataset", "beauty2023",
                             "--out", str(out), "--dtype", "bfloat16", "--tools", "all", "--max-context", "6144",
                             "--activation-checkpointing", "--batch-size", "2", "--group-size", "2",
                             "--max-turn-tokens", "8", "--steps", "2", "--eval-instances", "4", "--threads", "1",
                             "--checkpoint-every", "1"], ranks=2, timeout=420)
    assert code == 0, stderr[-3000:]
    for rank in range(2):
        dtypes = json.loads((out / f"dtypes_rank{rank}.json").read_text())
        assert dtypes == {"cache": ["torch.bfloat16"], "rollout_model": ["torch.bfloat16"],
                          "reference": ["torch.bfloat16"], "master": ["torch.float32"]}, dtypes
    assert json.loads((out / "final" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {v.dtype for v in load_file(out / "final" / "model.safetensors").values()} == {torch.bfloat16}
    assert (out / "report.json").is_file()
    import transformers
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out / "final", dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    ours = load_pretrained(out / "final")
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits.float(), ours(ids).float(), atol=2e-2)


def test_the_bf16_rollout_copy_is_the_master_weights_rounded(tmp_path):
    """Under FSDP with bf16 compute, the rollout copy (built, then refreshed in place, tensor by tensor) holds
    exactly the trained fp32 master weights rounded to bf16."""
    out = tmp_path / "copy.safetensors"
    run_worker(out, "copy", ranks=2)
    tensors = load_file(out)
    names = [k.removeprefix("master.") for k in tensors if k.startswith("master.")]
    torch.manual_seed(0)
    start = Qwen3(tiny_config()).state_dict()
    assert any(not torch.equal(tensors[f"master.{k}"], start[k]) for k in names)  # trained, not the initial weights
    for k in names:
        assert tensors[f"copy.{k}"].dtype == torch.bfloat16 and tensors[f"master.{k}"].dtype == torch.float32
        assert torch.equal(tensors[f"copy.{k}"], tensors[f"master.{k}"].to(torch.bfloat16)), k


def test_four_ranks_on_an_empty_cache_train_sasrec_once(tmp_path):
    """Rank 0 trains and caches SASRec while the others wait; they then load that same model."""
    out = tmp_path / "sasrec"
    run_worker(out, "sasrec", ranks=4, env={"AGENTICREC_CACHE": str(tmp_path / "cache")})
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(4)]
    assert [r["trained"] for r in ranks] == [1, 0, 0, 0]
    assert len({r["weights"] for r in ranks}) == 1
    assert len(list((tmp_path / "cache").glob("sasrec-*.safetensors"))) == 1


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


def test_real_rollouts_run_end_to_end(policy, tmp_path, monkeypatch):
    engines = []
    monkeypatch.setattr(trainer, "Engine", lambda *a, **k: engines.append(Engine(*a, **k)) or engines[-1])
    train_grpo.main(["--model", str(policy), *SMALL, "--steps", "2", "--out", str(tmp_path), "--decode", "static",
                     "--eval-candidates", "20,50", "--max-context", "8192"])  # 50 candidates: ~7k tokens
    assert [e.decode for e in engines] == ["static"]  # --decode reaches the rollout engine
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
    assert records[0]["eval_n"] == 8  # --eval-instances 4 of each size
    by_size = json.loads((tmp_path / "report.json").read_text())["by_size"]
    assert {n: r["n"] for n, r in by_size.items()} == {"20": 4, "50": 4}  # JSON keys are strings
