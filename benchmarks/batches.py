"""What the benchmarks feed and time: a seeded random meta-batch and one synchronised timed call.

Imports torch, numpy and :mod:`tasks` only, so the GPU check (torch alone) can use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from learners.base import Learner, synchronize
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.store import SplitStore

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


def training_batch(
    learner: Learner,
    device: torch.device,
    tasks: int,
    seed: int = 0,
    image: tuple[int, int, int] = IMAGE,
    query: int = QUERY,
) -> Any:
    """What ``learner``'s ``meta_train_step`` takes, of these sizes: :func:`random_batch` for a family that
    trains on episodes; for one with its own ``training_sampler`` (``finetune``'s class mini-batches), its
    first draw from a seeded random split of ``WAYS * tasks`` classes of ``SHOTS + query`` images each
    (the images of one meta-batch)."""
    if learner.trains_on_episodes:
        return random_batch(device, tasks, seed, image, query)
    per_class, classes = SHOTS + query, WAYS * tasks
    images = np.random.default_rng(seed).integers(0, 256, (classes * per_class, *image), dtype=np.uint8)
    split = SplitStore(
        name="train",
        images=images,
        class_offsets=np.arange(classes + 1) * per_class,
        class_counts=np.full(classes, per_class),
        class_names=[str(c) for c in range(classes)],
        class_groups=[""] * classes,
    )
    return learner.training_sampler(split, EpisodeSpec(WAYS, SHOTS, query), tasks, seed).sample().to(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
