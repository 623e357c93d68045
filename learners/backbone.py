"""The Conv-4 embedding shared by the families (Vinyals et al. 2016, Snell et al. 2017, Finn et al. 2017).

``depth`` blocks of 3x3 convolution (``width`` filters, padding 1) -> batch-norm -> ReLU, each
halving the spatial size either with a 2x2 max-pool (Vinyals, Snell; Finn on miniImageNet) or
by giving the convolution stride 2 instead (Finn's Omniglot model); the last feature map is
flattened into the embedding (``features="flatten"``) or averaged over its positions
(``features="mean"``, ``width`` numbers: Finn's Omniglot model). Any ``C x H x W`` works (28x28
Omniglot, 84x84 miniImageNet) as long as ``depth`` halvings leave at least one pixel.

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
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Downsample = Literal["pool", "stride"]
DOWNSAMPLES: tuple[str, ...] = ("pool", "stride")
Features = Literal["flatten", "mean"]
FEATURES: tuple[str, ...] = ("flatten", "mean")


class Conv4(nn.Module):
    """Conv-4 embedding network: ``[B, C, H, W] -> [B, embedding_dim]``."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        depth: int = 4,
        downsample: Downsample = "pool",
        running_stats: bool = True,
        features: Features = "flatten",
    ) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLES)}, got {downsample!r}")
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        if width < 1 or depth < 1:
            raise ValueError(f"Conv-4 width and depth must be positive, got width={width}, depth={depth}")
        channels, height, wide = image_shape
        self.out_hw = output_size((height, wide), depth, downsample)
        self.features = features
        self.embedding_dim = width if features == "mean" else width * self.out_hw[0] * self.out_hw[1]
        stride = 2 if downsample == "stride" else 1
        blocks = []
        for index in range(depth):
            layers: list[nn.Module] = [
                nn.Conv2d(channels if index == 0 else width, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width, track_running_stats=running_stats),
            ]
            layers += [nn.MaxPool2d(2), nn.ReLU()] if downsample == "pool" else [nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.blocks(x)
        return maps.mean((2, 3)) if self.features == "mean" else maps.flatten(1)


def output_size(hw: tuple[int, int], depth: int, downsample: Downsample) -> tuple[int, int]:
    """Spatial size after ``depth`` blocks; a clear error when the image is too small for them."""
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


def adaptable_classifier(
    image_shape: tuple[int, int, int],
    width: int,
    depth: int,
    downsample: Downsample,
    ways: int,
    features: Features = "flatten",
) -> nn.Sequential:
    """Conv-4 and a linear ``ways``-class head, batch-norm on batch statistics only.

    The network the gradient-based families (MAML, FOMAML, Meta-SGD, Reptile, the Meta-LSTM's
    learner) adapt functionally: a pure function of its parameters, so it runs under
    ``functional_call``, ``grad`` and ``vmap``.
    """
    encoder = Conv4(image_shape, width, depth, downsample, running_stats=False, features=features)
    return nn.Sequential(encoder, nn.Linear(encoder.embedding_dim, ways))
