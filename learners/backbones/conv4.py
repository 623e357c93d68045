"""The Conv-4 backbone (Vinyals et al. 2016, Snell et al. 2017, Finn et al. 2017).

``depth`` blocks of 3x3 convolution (``width`` filters, padding 1) -> batch-norm -> ReLU, each
halving the spatial size either with a 2x2 max-pool (Vinyals, Snell; Finn on miniImageNet) or
by giving the convolution stride 2 instead (Finn's Omniglot model); the last feature map is
flattened into the embedding (``features="flatten"``, the default), averaged over its positions
(``features="mean"``, ``width`` numbers: Finn's Omniglot model) or returned as it is
(``features="map"``). Any ``C x H x W`` works (28x28 Omniglot, 84x84 miniImageNet) as long as
``depth`` halvings leave at least one pixel. ``pooled_blocks`` (default: all) lets only the first
blocks halve the size and the rest keep it: Sung et al.'s relation-network embedding (2 of 4).

Choices made:

- The convolutions have no bias: batch-norm subtracts the per-channel mean right after, so a
  bias would get exactly zero gradient and only cost time.
- ``running_stats=False`` makes batch-norm always normalise with the statistics of the batch
  it is given, in training and at test time, and keep no buffers. That is what Finn's MAML code
  does (so MAML-style learners are *transductive*: a query image's logits depend on the other
  query images of its task), and it keeps the module a pure function of its parameters, so it
  runs under ``torch.func.functional_call``, ``grad`` and ``vmap`` (one task per vmapped slice
  gets its own statistics). One caveat, PyTorch's and not this module's: differentiating
  *through* a ``vmap``-ed ``grad`` of it gives wrong gradients (see :mod:`learners.meta_gradient`).
- A pooled block applies the max-pool before the ReLU. The two commute exactly (``max`` of
  ReLUs is the ReLU of the ``max``, in floating point too, gradients included), and the ReLU then
  runs on a quarter of the values: the metric families' steps are bound by such element-wise
  passes on a CPU (docs/metric-speed.md). Parameter names are unchanged (neither has parameters).
- ``running_stats=True`` is the usual batch-norm (batch statistics while training, running
  averages in eval mode), as in Snell's ProtoNet.
- Knobs read from the hyperparameters: ``width`` and ``depth`` (``dropblock`` is ResNet-12's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from learners.backbones.base import Backbone, BackboneOptions, Features, check_features, output_dim

if TYPE_CHECKING:
    from learners.base import BackboneHyperparams

Downsample = Literal["pool", "stride"]
DOWNSAMPLES: tuple[str, ...] = ("pool", "stride")


class Conv4(Backbone):
    """Conv-4 embedding network: ``[B, C, H, W] -> [B, embedding_dim]``."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        depth: int = 4,
        downsample: Downsample = "pool",
        running_stats: bool = True,
        features: Features = "flatten",
        pooled_blocks: int | None = None,
    ) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLES)}, got {downsample!r}")
        check_features(features)
        if width < 1 or depth < 1:
            raise ValueError(f"Conv-4 width and depth must be positive, got width={width}, depth={depth}")
        pooled = depth if pooled_blocks is None else pooled_blocks
        if not 0 <= pooled <= depth:
            raise ValueError(f"Conv-4 pooled_blocks must be in [0, depth={depth}], got {pooled_blocks}")
        channels, height, wide = image_shape
        self.out_hw = output_size((height, wide), pooled, downsample)
        self.feature_shape = (width, *self.out_hw)
        self.features = features
        self.embedding_dim = output_dim(self.feature_shape, features)
        blocks = []
        for index in range(depth):
            halves = index < pooled
            stride = 2 if downsample == "stride" and halves else 1
            layers: list[nn.Module] = [
                nn.Conv2d(channels if index == 0 else width, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width, track_running_stats=running_stats),
            ]
            layers += [nn.MaxPool2d(2), nn.ReLU()] if downsample == "pool" and halves else [nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)

    @classmethod
    def from_hparams(
        cls, hparams: BackboneHyperparams, image_shape: tuple[int, int, int], options: BackboneOptions
    ) -> Conv4:
        if options.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLES)}, got {options.downsample!r}")
        return cls(
            image_shape,
            hparams.width,
            hparams.depth,
            "stride" if options.downsample == "stride" else "pool",
            options.running_stats,
            options.features or "flatten",
            options.pooled_blocks,
        )

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def output_size(hw: tuple[int, int], depth: int, downsample: Downsample) -> tuple[int, int]:
    """Spatial size after ``depth`` halving blocks; a clear error when the image is too small for them."""
    height, wide = hw
    for _ in range(depth):
        # max-pool 2x2 floors; a stride-2 3x3 convolution with padding 1 rounds up.
        height, wide = (height // 2, wide // 2) if downsample == "pool" else ((height + 1) // 2, (wide + 1) // 2)
    if height < 1 or wide < 1:
        raise ValueError(
            f"a {hw[0]}x{hw[1]} image is too small for depth {depth} with {downsample} downsampling "
            f"(each block halves it); use a smaller depth"
        )
    return height, wide
