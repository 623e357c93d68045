"""Peak memory and FLOP/s columns for the benchmarks, measured the same way for every row.

Peak memory of one call (a meta-iteration): :func:`learners.peak_memory.peak_bytes`, that is
``torch.cuda.max_memory_allocated`` on CUDA and, on a CPU, the highest running total of the
allocations and frees torch's CPU allocator reports to the autograd profiler (tensor bytes; not
Python objects, not what glibc keeps cached). Each call is measured once, after a warm-up, so
caches and optimizer state exist already; the figure does not depend on how busy the CPU is.

FLOP/s: the FLOPs of a call counted by ``torch.utils.flop_counter.FlopCounterMode``, divided by
its measured time and set against the same run's dense ``torch.mm`` rate (2048x2048 float32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from learners.peak_memory import peak_bytes

MATMUL_SIZE = 2048
HOW = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "tensor bytes from torch's CPU allocator, via the autograd profiler"}


def peaks(methods: dict[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """Name -> peak bytes of one call of each method (call each once before, to warm it up)."""
    return {name: peak_bytes(fn, device) for name, fn in methods.items()}


def matmul(device: torch.device) -> Callable[[], object]:
    """The dense-matmul reference to time beside the methods (its rate: :func:`matmul_flops_per_s`)."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device) for _ in range(2))
    return lambda: torch.mm(a, b)


def matmul_flops_per_s(seconds: float) -> float:
    return 2 * MATMUL_SIZE**3 / seconds


def flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def top_ops(fn: Callable[[], object], rows: int = 15) -> str:
    """A table of the ops that take the most time in one call of ``fn`` (``torch.autograd.profiler``,
    by self CPU time): what bounds a step's FLOP/s."""
    with profile() as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"
