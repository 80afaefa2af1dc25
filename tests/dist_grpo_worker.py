"""Run two GRPO updates on fixed synthetic groups, in one process or under torchrun, and save the final full
weights (rank 0): tests/test_train_grpo.py compares 1 process against 4 gloo ranks."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_grpo  # noqa: E402
from agenticrec import distributed as D  # noqa: E402
from agenticrec.data import Instance  # noqa: E402
from agenticrec.model import Qwen3  # noqa: E402
from grpo_fakes import synthetic_group, tiny_config  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = D.init_distributed("cpu")
    torch.manual_seed(0)
    model = Qwen3(tiny_config())
    ref = D.shard(train_grpo._frozen_copy(model), info)
    model = D.shard(model, info)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = train_grpo.Config(batch_size=8, group_size=4, kl_coef=0.05, temperature=0.8)
    for step in range(2):
        groups = [synthetic_group(Instance(f"u{i}", [1], i, [i]), step, cfg.group_size, i) for i in range(8)]
        share = cfg.batch_size // info.world  # whole groups per rank, contiguous
        mine = groups[info.rank * share:(info.rank + 1) * share]
        train_grpo.update(model, ref, optimizer, mine, [1.0] * len(mine), cfg, info)
    state = D.full_state_dict(model, info, cpu=True)
    if info.is_main:
        save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, out)
    D.shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1])
