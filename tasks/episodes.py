"""Episode containers shared by the sampler, the learners and the evaluator.

An episode batch holds ``tasks`` independent N-way K-shot problems as single tensors, so a
meta-batch is one tensor and gradient-based learners can ``vmap`` over the task axis.
Images travel as ``uint8`` (cheap to sample and to copy to a device) and become ``float32``
in ``[0, 1]`` on the device they are used on (:meth:`EpisodeBatch.to`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EpisodeSpec:
    """Shape of one episode: ``ways`` classes, ``shots`` support and ``query`` query images each."""

    ways: int
    shots: int
    query: int

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "query"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"episode {name} must be a positive integer, got {value!r}")
        if self.ways < 2:
            raise ValueError(f"episode ways must be at least 2, got {self.ways}")

    @property
    def images_per_class(self) -> int:
        return self.shots + self.query


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of episodes.

    ``support_x``: ``[tasks, ways*shots, C, H, W]``, ``support_y``: ``[tasks, ways*shots]``
    ``query_x``: ``[tasks, ways*query, C, H, W]``, ``query_y``: ``[tasks, ways*query]``

    Labels are episode-local class indices in ``[0, ways)``; support and query are ordered
    class by class (all shots of class 0, then class 1, ...).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def shots(self) -> int:
        return self.support_x.shape[1] // self.ways

    @property
    def query(self) -> int:
        return self.query_x.shape[1] // self.ways

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> EpisodeBatch:
        """Move to ``device``; ``uint8`` images become ``dtype`` in ``[0, 1]`` there."""

        def images(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device, non_blocking=True)
            return x.to(dtype).div_(255.0) if x.dtype == torch.uint8 else x.to(dtype)

        return EpisodeBatch(
            support_x=images(self.support_x),
            support_y=self.support_y.to(device, non_blocking=True),
            query_x=images(self.query_x),
            query_y=self.query_y.to(device, non_blocking=True),
            ways=self.ways,
        )

    def task(self, index: int) -> EpisodeBatch:
        """The single task ``index`` as a batch of one."""
        sl = slice(index, index + 1)
        return EpisodeBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl], self.ways)
