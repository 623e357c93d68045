"""What the benchmarks feed and time: a seeded random meta-batch and one synchronised timed call.

Imports torch and :mod:`tasks.episodes` only, so the GPU check (torch alone) can use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from learners.base import synchronize
from tasks.episodes import EpisodeBatch

WAYS, SHOTS, QUERY, IMAGE = 5, 1, 15, (1, 28, 28)  # the Omniglot 5-way 1-shot setting


def random_batch(
    device: torch.device, tasks: int, seed: int = 0, image: tuple[int, int, int] = IMAGE, query: int = QUERY
) -> EpisodeBatch:
    """A seeded random ``WAYS``-way ``SHOTS``-shot meta-batch: uint8 images made float in [0, 1]
    by ``EpisodeBatch.to``, labels class by class."""
    gen = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat_interleave(per_class).expand(tasks, -1).contiguous()

    def images(per_class: int) -> torch.Tensor:
        return torch.randint(0, 256, (tasks, WAYS * per_class, *image), generator=gen, dtype=torch.uint8)

    return EpisodeBatch(images(SHOTS), labels(SHOTS), images(query), labels(query), WAYS).to(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
