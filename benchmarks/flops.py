"""Achieved FLOP/s as a fraction of the same run's dense-matmul rate.

A step's FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward and backward; element-wise work counts nothing); the reference is a
``torch.mm`` of two ``MATMUL_SIZE`` squares, timed in the same interleaved rotation as the steps,
so a shared CPU's load weighs on both alike. Imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

MATMUL_SIZE = 2048
MATMUL_FLOPS = 2 * MATMUL_SIZE**3


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (it runs once, for real)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_reference(device: torch.device) -> Callable[[], torch.Tensor]:
    """A ``MATMUL_SIZE`` square ``torch.mm`` on ``device``: time it beside the steps; it does ``MATMUL_FLOPS``."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device) for _ in range(2))
    return lambda: torch.mm(a, b)


def matmul_flops_per_s(seconds: float) -> float:
    """The reference's rate when one call took ``seconds``."""
    return MATMUL_FLOPS / seconds


def fraction_of_matmul(flops: int, seconds: float, matmul_seconds: float) -> float:
    """``flops`` done in ``seconds`` as a fraction of the matmul rate (``MATMUL_FLOPS`` in ``matmul_seconds``)."""
    return (flops / seconds) / (MATMUL_FLOPS / matmul_seconds)
