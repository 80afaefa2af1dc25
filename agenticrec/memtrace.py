"""Peak tensor memory of a block of code, on CPU as on GPU: the memory events of ``torch.profiler``.

    with allocation_peak() as peak:
        engine.run(...)
    peak.bytes     # the most bytes allocated inside the block and not yet freed, at any moment
    peak.total     # all bytes allocated inside the block (freed or not)

CPU has no ``torch.cuda.max_memory_allocated``; the profiler records every allocation and free of the caching
allocator (CPU and CUDA) with its size and time, and the running sum of those events is the live memory. Memory
allocated before the block and freed inside it counts negative, so ``bytes`` can undercount by what the block
frees of older tensors; ``benchmarks/memory.py`` measures each phase from its start.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Peak:
    bytes: int = 0  # the peak of (allocated - freed) since the block began
    total: int = 0  # every byte allocated inside the block


@contextmanager
def allocation_peak(device_type: str = "cpu"):
    """A ``Peak`` filled in when the block ends (``device_type``: whose allocations count, "cpu" or "cuda")."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    peak = Peak()
    with profile(activities=activities, profile_memory=True) as prof:
        yield peak
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name.lower() == device_type)
    live = 0
    for _, nbytes in events:
        live += nbytes
        peak.bytes = max(peak.bytes, live)
        peak.total += max(nbytes, 0)
