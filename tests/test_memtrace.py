"""agenticrec.memtrace: the peak of live tensor bytes inside a block, from the profiler's allocation events."""

import torch

from agenticrec.memtrace import allocation_peak


def test_the_peak_is_the_largest_live_sum_and_the_total_counts_every_allocation():
    kept = torch.zeros(1000)  # allocated before the block: not counted
    with allocation_peak() as peak:
        a = torch.zeros(250_000)  # 1 MB
        b = torch.zeros(500_000)  # 2 MB: 3 MB live
        del a, b  # 0 live
        c = torch.zeros(125_000)  # 0.5 MB
    assert peak.bytes == 3_000_000
    assert peak.total == 3_500_000
    assert c.numel() and kept.numel()
