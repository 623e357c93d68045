"""Peak-memory columns for the benchmarks, measured the same way for every row.

Peak memory of one call (a meta-iteration): :func:`learners.peak_memory.peak_bytes`, that is
``torch.cuda.max_memory_allocated`` on CUDA and, on a CPU, the highest running total of the
allocations and frees torch's CPU allocator reports to the autograd profiler (tensor bytes; not
Python objects, not what glibc keeps cached). Each call is measured once, after a warm-up, so
caches and optimizer state exist already; the figure does not depend on how busy the CPU is.
FLOP/s columns: :mod:`benchmarks.flops`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.profiler import profile

from learners.peak_memory import peak_bytes

HOW = {
    "cuda": "torch.cuda.max_memory_allocated",
    "cpu": "tensor bytes from torch's CPU allocator, via the autograd profiler",
}


def peaks(methods: dict[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """Name -> peak bytes of one call of each method (call each once before, to warm it up)."""
    return {name: peak_bytes(fn, device) for name, fn in methods.items()}


def top_ops(fn: Callable[[], object], rows: int = 15) -> str:
    """A table of the ops that take the most time in one call of ``fn`` (``torch.autograd.profiler``,
    by self CPU time): what bounds a step's FLOP/s."""
    with profile() as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"
