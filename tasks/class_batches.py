"""Ordinary supervised mini-batches from a split: random images with their split-wide class labels.

What the pre-train + fine-tune family (:mod:`learners.finetune`) trains on instead of episodes.
Each epoch is one seeded permutation of every image of the split, cut into batches of
``batch_size`` images (an epoch's short remainder is dropped, so every step has the same shape;
a batch size above the split's image count takes the whole split). Labels are the split's class
indices ``0 .. num_classes - 1``, the rows of one classifier over all training classes.

Like :class:`tasks.sampler.EpisodeSampler`, a sampler is reproducible from its seed alone; a
trial that resumes builds a new one with a seed derived from the iteration it resumes at
(:mod:`pipeline.trainable`), so it draws fresh batches rather than replaying old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.store import SplitStore


@dataclass(frozen=True)
class ClassBatch:
    """``images``: ``[batch, C, H, W]`` (``uint8`` as sampled); ``labels``: ``int64 [batch]``, split-wide classes."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ClassBatch:
        """Move to ``device``; ``uint8`` images become ``dtype`` in ``[0, 1]`` there (as episodes do)."""
        images = self.images.to(device, non_blocking=True)
        images = images.to(dtype).div_(255.0) if images.dtype == torch.uint8 else images.to(dtype)
        return ClassBatch(images, self.labels.to(device, non_blocking=True))


class ClassBatchSampler:
    """Shuffled mini-batches of ``batch_size`` images of ``split``, epoch after epoch, from ``seed``."""

    def __init__(self, split: SplitStore, batch_size: int, seed: int = 0) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(split.images) == 0:
            raise ValueError(f"split {split.name!r} has no images to train on")
        self.split = split
        self.batch_size = min(batch_size, len(split.images))
        self._labels = np.repeat(np.arange(split.num_classes, dtype=np.int64), split.class_counts)
        self._rng = np.random.default_rng(seed)
        self._order = np.empty(0, dtype=np.int64)
        self._next = 0

    def sample(self) -> ClassBatch:
        """The next mini-batch: ``uint8`` CPU images and their class labels."""
        if self._next + self.batch_size > len(self._order):
            self._order = self._rng.permutation(len(self._labels))
            self._next = 0
        rows = np.sort(self._order[self._next : self._next + self.batch_size])  # sorted: faster gather
        self._next += self.batch_size
        return ClassBatch(torch.from_numpy(self.split.images[rows]), torch.from_numpy(self._labels[rows]))
