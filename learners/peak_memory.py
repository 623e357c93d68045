"""Peak memory a call allocates, on a CPU or a CUDA device, and byte sizes written for people.

On CUDA: ``torch.cuda.max_memory_allocated`` over the call, less what was allocated before it.
On a CPU torch keeps no allocator counters, so the call runs under the autograd profiler
(``torch.autograd.profiler.profile(profile_memory=True)``; ``torch.profiler.profile`` would import
``torch._inductor`` first, ~9 s cold here): the profiler records every allocation and free made through torch's CPU
allocator (tensor storage, including what compiled kernels allocate), and the peak is the
highest running sum of those, in time order, above the level at the start. It counts tensor
bytes only: not Python objects, and not memory glibc keeps cached after a free, so it is what
a meta-iteration needs, not what the process's RSS shows. The count does not depend on timing,
so a choice made on it repeats from run to run.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch.autograd.profiler import profile

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``run()`` runs, above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(profile_memory=True) as prof:
        run()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events() if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in changes:
        level += nbytes
        peak = max(peak, level)
    return peak


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (B, KB, MB, GB; KiB, MiB, GiB), e.g. ``2GiB``."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in ("", *UNITS):
        raise ValueError(f"expected a size such as 2GiB or 512MiB (units B, KB, MB, GB, KiB, MiB, GiB), got {text!r}")
    return int(float(match.group(1)) * UNITS.get(unit, 1))


def format_size(nbytes: float) -> str:
    """``nbytes`` in MiB or GiB, e.g. ``312.4 MiB``."""
    return f"{nbytes / 2**30:.2f} GiB" if abs(nbytes) >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
