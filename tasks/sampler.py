"""Draw N-way K-shot Q-query episodes from a split as batched ``uint8`` tensors.

Each task picks ``ways`` distinct classes in random order (label ``j`` = the ``j``-th pick)
and ``shots + query`` distinct images of each; the first ``shots`` go to the support set.
All indices are drawn for the whole batch at once and the images gathered with one numpy
fancy-indexing call per set, so a meta-batch costs a couple of memory copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.errors import EpisodeError
from tasks.store import SplitStore


def check_episode(split: SplitStore, spec: EpisodeSpec) -> None:
    """Raise :class:`EpisodeError` if ``split`` cannot supply ``spec`` episodes."""
    if spec.ways > split.num_classes:
        fewer = f"use ways <= {split.num_classes} or " if split.num_classes >= 2 else ""  # never 1-way
        raise EpisodeError(
            f"{spec.ways}-way episodes need {spec.ways} classes but split {split.name!r} has {split.num_classes}: "
            f"{fewer}build the dataset with more {split.name} classes"
        )
    if spec.images_per_class > split.min_class_size:
        raise EpisodeError(
            f"episodes need shots + query = {spec.shots} + {spec.query} = {spec.images_per_class} images per class "
            f"but the smallest class of split {split.name!r} has {split.min_class_size}: "
            f"lower shots or query so that shots + query <= {split.min_class_size}"
        )


class EpisodeSampler:
    """Random episode batches of ``tasks`` tasks from ``split``, reproducible from ``seed``."""

    def __init__(self, split: SplitStore, spec: EpisodeSpec, tasks: int = 1, seed: int = 0) -> None:
        if not isinstance(tasks, int) or tasks < 1:
            raise ValueError(f"tasks (meta-batch size) must be a positive integer, got {tasks!r}")
        check_episode(split, spec)
        self.split = split
        self.spec = spec
        self.tasks = tasks
        self._rng = np.random.default_rng(seed)

    def sample(self) -> EpisodeBatch:
        """The next batch: ``uint8`` CPU tensors ``[tasks, ways*shots|ways*query, C, H, W]``."""
        support, query = _draw_rows(self.split, self.spec, self.tasks, self._rng)
        return _gather(self.split, self.spec, support, query)


def fixed_episodes(
    split: SplitStore, spec: EpisodeSpec, episodes: int, seed: int, batch_tasks: int = 50
) -> Iterator[EpisodeBatch]:
    """``episodes`` evaluation episodes in batches of up to ``batch_tasks`` tasks.

    Episode ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so it depends only
    on ``(seed, i, split, spec)``: every model sees the same episodes, whatever the batching.
    """
    check_episode(split, spec)
    if not isinstance(episodes, int) or episodes < 0:
        raise ValueError(f"episodes must be a non-negative integer, got {episodes!r}")
    if not isinstance(batch_tasks, int) or batch_tasks < 1:
        raise ValueError(f"batch_tasks must be a positive integer, got {batch_tasks!r}")
    return _fixed(split, spec, episodes, seed, batch_tasks)


def _fixed(split: SplitStore, spec: EpisodeSpec, episodes: int, seed: int, batch_tasks: int) -> Iterator[EpisodeBatch]:
    for start in range(0, episodes, batch_tasks):
        drawn = [
            _draw_rows(split, spec, 1, np.random.default_rng([seed, i]))
            for i in range(start, min(start + batch_tasks, episodes))
        ]
        support = np.concatenate([s for s, _ in drawn])
        query = np.concatenate([q for _, q in drawn])
        yield _gather(split, spec, support, query)


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``keys`` along the last axis, in increasing key order."""
    if k < keys.shape[-1]:
        index = np.argpartition(keys, k - 1, axis=-1)[..., :k]
    else:
        index = np.broadcast_to(np.arange(keys.shape[-1]), keys.shape)
    order = np.argsort(np.take_along_axis(keys, index, axis=-1), axis=-1)
    return np.take_along_axis(index, order, axis=-1)


def _draw_rows(
    split: SplitStore, spec: EpisodeSpec, tasks: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``split.images``: support ``[tasks, ways*shots]``, query ``[tasks, ways*query]``."""
    classes = _smallest(rng.random((tasks, split.num_classes)), spec.ways)  # [T, N], random order
    counts = split.class_counts[classes]
    keys = rng.random((tasks, spec.ways, int(counts.max())))
    keys[np.arange(keys.shape[-1]) >= counts[..., None]] = 2.0  # past the class's end: never picked
    rows = split.class_offsets[classes][..., None] + _smallest(keys, spec.images_per_class)  # [T, N, K+Q]
    support = rows[..., : spec.shots].reshape(tasks, -1)
    query = rows[..., spec.shots :].reshape(tasks, -1)
    return support, query


def _gather(split: SplitStore, spec: EpisodeSpec, support: np.ndarray, query: np.ndarray) -> EpisodeBatch:
    tasks = len(support)
    labels = torch.arange(spec.ways, dtype=torch.int64)
    return EpisodeBatch(
        support_x=torch.from_numpy(split.images[support]),
        support_y=labels.repeat_interleave(spec.shots).expand(tasks, -1).contiguous(),
        query_x=torch.from_numpy(split.images[query]),
        query_y=labels.repeat_interleave(spec.query).expand(tasks, -1).contiguous(),
        ways=spec.ways,
    )
