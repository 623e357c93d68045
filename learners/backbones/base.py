"""What every backbone is: an embedding network that also shows its unflattened feature map.

A :class:`Backbone` maps images ``[B, C, H, W]`` to ``[B, embedding_dim]`` (``features="flatten"``
or ``"mean"``) or to the feature map itself ``[B, *feature_shape]`` (``features="map"``, what relation
networks compare). :meth:`Backbone.from_hparams` builds it from a family's hyperparameters
(:class:`learners.base.BackboneHyperparams`) and what the family asks of it (:class:`BackboneOptions`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from learners.base import BackboneHyperparams

Features = Literal["flatten", "mean", "map"]
FEATURES: tuple[str, ...] = ("flatten", "mean", "map")


@dataclass(frozen=True)
class BackboneOptions:
    """What a family asks of its backbone, beyond the hyperparameters' knobs.

    ``running_stats``: batch-norm keeps running averages (False: batch statistics only, no buffers,
    nothing random: a pure function for ``torch.func``). ``features``: the output's form, None for the
    backbone's default. ``downsample``, ``pooled_blocks``: Conv-4's (other backbones ignore them).
    """

    running_stats: bool
    features: Features | None = None
    downsample: str = "pool"
    pooled_blocks: int | None = None


class Backbone(nn.Module, abc.ABC):
    """An embedding network; subclasses set the three attributes and implement the two methods."""

    embedding_dim: int  # the size of one image's output, flattened
    feature_shape: tuple[int, int, int]  # the last feature map, C x h x w
    features: Features

    @classmethod
    @abc.abstractmethod
    def from_hparams(
        cls, hparams: BackboneHyperparams, image_shape: tuple[int, int, int], options: BackboneOptions
    ) -> Backbone:
        """The backbone sized by ``hparams`` (``width`` and the knobs it reads) for ``image_shape``."""

    @abc.abstractmethod
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[B, *feature_shape]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.feature_map(x)
        if self.features == "mean":
            return maps.mean((2, 3))
        return maps if self.features == "map" else maps.flatten(1)


def check_features(features: str) -> None:
    """A clear error for a features value no backbone produces."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")


def output_dim(feature_shape: tuple[int, int, int], features: Features) -> int:
    """``embedding_dim`` of a backbone whose last map is ``feature_shape``."""
    channels, height, width = feature_shape
    return channels if features == "mean" else channels * height * width
