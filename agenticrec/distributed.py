"""FSDP2 for the trainer, and the few collectives around it. One process or ``torchrun``: the same code.

Choices (docs/grpo.md, "Distributed"):
- **Mesh and backend.** ``torchrun`` is detected from RANK / WORLD_SIZE; nccl on GPU, gloo on CPU, with an
  explicit ``init_device_mesh(device_type, (world,))`` (the default mesh prefers CUDA whenever one exists, which
  breaks gloo).
- **Sharding.** ``fully_shard`` on every decoder layer, then on the root (embedding, final norm, LM head); an
  optional bf16 ``MixedPrecisionPolicy`` (fp32 gradient reduction).
- **Generation cannot hang.** Ranks generate different lengths, and an FSDP forward is a collective. So rollouts
  never run on the sharded model: before each rollout phase every rank all-gathers the full weights once (the same
  collectives on every rank) into a plain, unsharded copy, and generates with it without any collective.
- **Data.** Each rank takes its own instances, and whole groups stay on one rank, so group advantages need no
  communication; the loss normaliser is the global count (all-reduced) divided by the world size, because the
  gradient reduction averages over ranks (``agenticrec.grpo.grpo_loss``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    mesh: object | None  # DeviceMesh when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, timeout_minutes: float = 60.0) -> DistInfo:
    """Single process unless launched by torchrun (RANK and WORLD_SIZE set). ``timeout_minutes``: how long a
    collective may wait for a peer before the run aborts (NCCL's default, 10 minutes, is shorter than one rank's
    refill rounds or PPR mining can run ahead of another)."""
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        dev = torch.device(device or ("cuda" if cuda else "cpu"))
        return DistInfo(0, 1, 0, dev, None)
    from torch.distributed.device_mesh import init_device_mesh

    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes),
                                device_id=dev if cuda else None)  # device_id: NCCL binds its communicator eagerly
    mesh = init_device_mesh(dev.type, (world,))
    return DistInfo(rank, world, local_rank, dev, mesh)


def shard(model: torch.nn.Module, info: DistInfo, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """FSDP2 over the decoder layers and the root, computing in ``dtype`` over fp32 master weights (bf16: a
    ``MixedPrecisionPolicy`` with fp32 gradient reduction). In a single process nothing is sharded and a bf16
    ``dtype`` is autocast over the fp32 weights (``Qwen3.compute_dtype``): either way the optimiser updates fp32
    weights, so an lr-1e-6 step is not rounded away."""
    if next(model.parameters()).dtype != torch.float32 and any(p.requires_grad for p in model.parameters()):
        raise ValueError("trainable weights must be float32 (master weights); compute in bf16 with dtype=")
    model.compute_dtype = None if dtype == torch.float32 else dtype
    if info.world == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32
          else MixedPrecisionPolicy())
    for layer in model.model["layers"]:
        fully_shard(layer, mesh=info.mesh, mp_policy=mp)
    fully_shard(model, mesh=info.mesh, mp_policy=mp)
    return model


def full_state_dict(model: torch.nn.Module, info: DistInfo, cpu: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded weights on every rank (a collective under FSDP: call it on all ranks)."""
    if info.world == 1:
        return {k: (v.detach().cpu() if cpu else v.detach()) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu))


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in (``shard``'s ``dtype``): what its rollout copy and reference are kept in."""
    return getattr(model, "compute_dtype", None) or next(model.parameters()).dtype


@torch.no_grad()
def refresh_rollout_copy(model: torch.nn.Module, copy: torch.nn.Module | None, info: DistInfo) -> torch.nn.Module:
    """A plain module with the current full weights in the compute dtype, for generation; the model itself when
    it is unsharded and already in that dtype (one process, fp32).

    The copy is filled tensor by tensor: each parameter's shard is cast to the compute dtype, all-gathered (a
    collective: every rank walks the same names in the same order) and copied in, so the transient is one full
    tensor in the compute dtype, never a whole fp32 state dict. ``copy`` None (or released) builds a new one on
    meta first."""
    dtype = compute_dtype(model)
    if info.world == 1 and next(model.parameters()).dtype == dtype:
        return model
    from torch.distributed.tensor import DTensor

    from agenticrec.model import Qwen3
    if copy is None or copy is model:
        with torch.device("meta"):
            copy = Qwen3(model.config)
        copy = copy.to(dtype).to_empty(device=info.device)
        copy.tie_weights()
    targets = dict(copy.named_parameters())
    for name, p in model.named_parameters():
        targets[name].copy_(p.to(dtype).full_tensor() if isinstance(p, DTensor) else p)
    return copy.eval()


def rounds(n: int, chunk: int, info: DistInfo) -> list[tuple[int, list[int]]]:
    """This rank's share of ``n`` items (rank r takes r, r + world, ...) in rounds of at most ``chunk``: (offset of
    the round in the share, item indices). Every rank gets as many rounds (the largest share's; its last ones may
    be empty), so a collective after each round pairs up on every rank."""
    mine = list(range(info.rank, n, info.world))
    return [(start, mine[start:start + chunk]) for start in range(0, -(-n // info.world), chunk)]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums over ranks (identity in a single process)."""
    if info.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order (``[obj]`` in a single process)."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group and exit at once: gloo sometimes aborts at interpreter exit after all work
    succeeded ("terminate called without an active exception"); os._exit right after avoided it in 20 of 20 runs."""
    if info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)
