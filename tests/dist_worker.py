"""Run two updates on fixed synthetic data, in one process or under torchrun, and save the final full weights
(rank 0): the tests compare 1 process against gloo ranks.

    python tests/dist_worker.py OUT grpo        # trainer.update on 8 groups (whole groups per rank), AdamW
    python tests/dist_worker.py OUT one_token   # the same, groups 0-3 (rank 0's at 2 ranks) one token long
    python tests/dist_worker.py OUT logistic    # train_ppr.logistic_update on 4 pairs (2 per rank at 2 ranks), SGD
    python tests/dist_worker.py OUT profiles    # profiles.build_profiles of 3 histories into the cache OUT
    python tests/dist_worker.py OUT sasrec      # trainer.make_toolbox on beauty2023 (AGENTICREC_CACHE: empty)
    python tests/dist_worker.py OUT copy        # the bf16 rollout copy of a trained, sharded fp32 model
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_ppr  # noqa: E402
from agenticrec import distributed as D  # noqa: E402
from agenticrec.data import Instance  # noqa: E402
from agenticrec.model import Qwen3  # noqa: E402
from agenticrec.ppr import Pair, bidirectional_tasks  # noqa: E402
from agenticrec.trainer import GroupBatch, Objective, frozen_copy, update  # noqa: E402
from grpo_fakes import VOCAB, synthetic_group, tiny_config  # noqa: E402


def grpo_steps(model, info, one_token: bool = False, dtype=torch.float32, on_sharded=None) -> None:
    ref = D.shard(frozen_copy(model).to(dtype), info, dtype)
    model = D.shard(model, info, dtype)
    if on_sharded is not None:
        on_sharded(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = Objective(advantage="mean", aggregation="token_mean", clip_eps=0.2, kl_coef=0.05, kl_estimator="k3",
                          temperature=0.8, mu=1, grad_clip=1.0, update_rows=0)
    for step in range(2):
        groups = [synthetic_group(Instance(f"u{i}", [1], i, [i]), step, 4, i, one_token and i < 4) for i in range(8)]
        share = len(groups) // info.world  # whole groups per rank, contiguous
        mine = groups[info.rank * share:(info.rank + 1) * share]
        update(model, ref, optimizer, GroupBatch(mine, [1.0] * len(mine), []), objective, info)
    return model


def logistic_steps(model, info):
    """Plain SGD, which unlike Adam moves by the gradient's scale: the loss must be the GLOBAL mean over pairs. (The
    shares are equal: under FSDP every forward is a collective, so every rank scores the same number of tasks.)"""
    model = D.shard(model, info)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    pairs = [Pair("u", (1,), 1, positive=10 + i, negative=100 + i, negative_rank=1, target_rank=2, pool_size=1)
             for i in range(4)]
    tasks = bidirectional_tasks(pairs, seed=0)
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(5, VOCAB, (10 + i,), generator=g).tolist() for i in range(len(tasks))]
    share = len(pairs) // info.world
    mine = range(info.rank * share, (info.rank + 1) * share)
    tasks, contexts = ([seq[2 * i + d] for i in mine for d in (0, 1)] for seq in (tasks, contexts))
    letters = SimpleNamespace(encode=lambda text, add_special_tokens: [
        3 + ord(c) % (VOCAB - 3) for c in text])  # any fixed encoding of the two answers will do
    cfg = train_ppr.Config(temperature=0.8, grad_clip=1e9)
    for _ in range(2):
        train_ppr.logistic_update(model, optimizer, letters, tasks, contexts, [], cfg, info)
    return model


def profile_build(out: str, info) -> None:
    """Each rank writes how many profiles it generated to generated_rank{r}.json beside ``out``."""
    import agenticrec.profiles as P
    from test_profiles import INSTANCES, tiny_lm
    from test_tools import tiny

    generated = []
    real = P.generate_profiles
    P.generate_profiles = lambda model, tokenizer, data, histories, **kw: (
        generated.append(len(histories)) or real(model, tokenizer, data, histories, **kw))
    model, tokenizer = tiny_lm(Path(out).parent / f"rank{info.rank}")
    P.build_profiles(model, tokenizer, tiny(), INSTANCES, out, info, max_new_tokens=4)
    (Path(out).parent / f"generated_rank{info.rank}.json").write_text(json.dumps(sum(generated)))


def toolbox_build(out: str, info) -> None:
    """Each rank writes how many SASRec models it trained, and a digest of the one it got, to OUT.rank{r}.json."""
    import hashlib

    from agenticrec import sasrec, trainer
    from agenticrec.data import load_dataset
    trained, real = [], sasrec.train_sasrec
    sasrec.train_sasrec = lambda *args, **kw: trained.append(1) or real(*args, **kw)
    box = trainer.make_toolbox(load_dataset("beauty2023"), "all", info=info)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in box.sasrec.state_dict().values())).hexdigest()
    Path(f"{out}.rank{info.rank}.json").write_text(json.dumps({"trained": len(trained), "weights": digest}))
    D.barrier(info)
    if info.is_main:
        Path(out).write_text("done")


def rollout_copy(out: str, info) -> None:
    """The bf16 rollout copy built from the initial shards, then two updates, then the copy refreshed in place;
    rank 0 saves the copy (``copy.*``) beside the fp32 master weights (``master.*``)."""
    torch.manual_seed(0)
    built = {}
    model = grpo_steps(Qwen3(tiny_config()), info, dtype=torch.bfloat16,
                       on_sharded=lambda m: built.update(copy=D.refresh_rollout_copy(m, None, info)))
    copy = D.refresh_rollout_copy(model, built["copy"], info)
    assert copy is built["copy"]
    master = D.full_state_dict(model, info, cpu=True)
    if info.is_main:
        tensors = {f"copy.{k}": v.contiguous() for k, v in copy.state_dict().items() if k != "lm_head.weight"}
        tensors.update({f"master.{k}": v.contiguous() for k, v in master.items() if k != "lm_head.weight"})
        save_file(tensors, out)


def main(out: str, objective: str) -> None:
    torch.set_num_threads(1)
    info = D.init_distributed("cpu", timeout_minutes=2)  # a stuck collective aborts the ranks themselves
    if objective in ("profiles", "sasrec", "copy"):
        {"profiles": profile_build, "sasrec": toolbox_build, "copy": rollout_copy}[objective](out, info)
        D.shutdown(info)
        return
    torch.manual_seed(0)
    steps = {"grpo": grpo_steps, "logistic": logistic_steps, "one_token": lambda m, i: grpo_steps(m, i, True)}
    model = steps[objective](Qwen3(tiny_config()), info)
    state = D.full_state_dict(model, info, cpu=True)
    if info.is_main:
        save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, out)
    D.shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
