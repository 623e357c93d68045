"""ResNet-12 (Lee et al. 2019, MetaOptNet; Tian et al. 2020, RFS; after Oreshkin et al. 2018, TADAM).

Four residual blocks of ``width x (1, 2.5, 5, 10)`` filters (64-160-320-640 at ``width=64``). A
block is three 3x3 convolutions (padding 1, no bias), each followed by batch-norm, with a
LeakyReLU(0.1) after the first two; a 1x1 convolution + batch-norm shortcut is added to the third's
output, then LeakyReLU(0.1) and a 2x2 max-pool. An 84x84 image leaves a 640x5x5 map. The embedding
is its global average (``features="mean"``, 640 numbers, as RFS), or the flattened map
(``features="flatten"``, 16,000 at 84x84, as MetaOptNet), or the map itself (``features="map"``).

Choices made:

- ``dropblock`` (the hyperparameter; 0 = off) is RFS's/MetaOptNet's ``drop_rate``: plain dropout
  at that rate after the first two blocks, DropBlock (Ghiasi et al. 2018; 5x5 blocks, or the whole
  map when it is smaller) after the last two. The codes ramp DropBlock's rate up linearly over the
  first 40,000 steps from the block's step counter; here the rate is constant from the first step,
  so the network keeps no counter (a learner does not know its step budget, and a buffer would
  make a checkpointed ResNet-12 differ from a fresh one in more than its weights).
- The max-pool runs before the last LeakyReLU: the two commute exactly (LeakyReLU is increasing),
  and the activation then touches a quarter of the values (as Conv-4's pool before ReLU).
- ``running_stats=False``: batch-norm on the statistics of each batch only, no buffers, and no
  dropout or DropBlock (a random mask per call cannot run under ``torch.func.vmap`` nor be replayed
  by the Hessian-vector products of :mod:`learners.meta_gradient`): a pure function of its
  parameters, as Conv-4's variant is. Asking for dropout there is an error.
- Weights start as in RFS: Kaiming-normal convolutions (fan out, leaky ReLU), batch-norm 1 and 0.
- Knobs read from the hyperparameters: ``width`` and ``dropblock`` (``depth`` is Conv-4's: the
  residual stages are fixed at four, as published).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones.base import Backbone, BackboneOptions, Features, check_features, output_dim

if TYPE_CHECKING:
    from learners.base import BackboneHyperparams

STAGE_MULTIPLIERS: tuple[float, ...] = (1.0, 2.5, 5.0, 10.0)  # 64-160-320-640 at width 64
DROPBLOCK_SIZE = 5
DROPBLOCK_STAGES = (2, 3)  # the last two blocks use DropBlock, the first two plain dropout
NEGATIVE_SLOPE = 0.1


def stage_widths(width: int) -> tuple[int, ...]:
    """The four blocks' filters for a first stage of ``width``."""
    return tuple(max(1, round(width * m)) for m in STAGE_MULTIPLIERS)


class ResidualBlock(nn.Module):
    """Three 3x3 convolutions + batch-norm, a 1x1 shortcut, LeakyReLU, 2x2 max-pool, optional dropout."""

    def __init__(self, channels_in: int, channels: int, running_stats: bool, drop_rate: float, dropblock: bool):
        super().__init__()

        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(channels, track_running_stats=running_stats)

        self.conv1, self.bn1 = nn.Conv2d(channels_in, channels, 3, padding=1, bias=False), bn()
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn()
        self.conv3, self.bn3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn()
        self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, bias=False), bn())
        self.drop_rate = drop_rate
        self.dropblock = dropblock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), NEGATIVE_SLOPE)
        out = F.leaky_relu(self.bn2(self.conv2(out)), NEGATIVE_SLOPE)
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.leaky_relu(F.max_pool2d(out, 2), NEGATIVE_SLOPE)
        if self.drop_rate > 0 and self.training:
            out = drop_block(out, self.drop_rate, DROPBLOCK_SIZE) if self.dropblock else F.dropout(out, self.drop_rate)
        return out


def drop_block(x: torch.Tensor, rate: float, block_size: int) -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018) as MetaOptNet/RFS apply it: zero ``block x block`` squares whose
    seeds fall with the probability that drops ``rate`` of the map, rescale the rest to keep the mean."""
    height, width = x.shape[-2:]
    block = min(block_size, height, width)
    seeds_h, seeds_w = height - block + 1, width - block + 1
    gamma = rate / block**2 * (height * width) / (seeds_h * seeds_w)
    seeds = torch.bernoulli(torch.full((*x.shape[:2], seeds_h, seeds_w), min(gamma, 1.0), device=x.device))
    dropped = F.max_pool2d(F.pad(seeds, (block - 1,) * 4), block, stride=1)  # each seed covers its block
    keep = 1.0 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResNet12(Backbone):
    """ResNet-12 embedding network: ``[B, C, H, W] -> [B, embedding_dim]`` (see the module docstring)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        running_stats: bool = True,
        features: Features = "mean",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_features(features)
        if width < 1:
            raise ValueError(f"ResNet-12 width must be positive, got {width}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"dropblock must be in [0, 1), got {drop_rate!r}")
        if drop_rate > 0 and not running_stats:
            raise ValueError(
                f"dropblock must be 0 for a ResNet-12 without running statistics (the gradient-based families' "
                f"pure network: random masks cannot run under torch.func), got {drop_rate!r}"
            )
        channels, height, wide = image_shape
        for _ in STAGE_MULTIPLIERS:
            height, wide = height // 2, wide // 2
        if height < 1 or wide < 1:
            raise ValueError(
                f"a {image_shape[1]}x{image_shape[2]} image is too small for ResNet-12 (four 2x2 max-pools need "
                f"at least 16x16)"
            )
        widths = stage_widths(width)
        self.stages = nn.Sequential(
            *(
                ResidualBlock(c_in, c, running_stats, drop_rate, index in DROPBLOCK_STAGES)
                for index, (c_in, c) in enumerate(zip((channels, *widths[:-1]), widths, strict=True))
            )
        )
        self.feature_shape = (widths[-1], height, wide)
        self.features = features
        self.embedding_dim = output_dim(self.feature_shape, features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    @classmethod
    def from_hparams(
        cls, hparams: BackboneHyperparams, image_shape: tuple[int, int, int], options: BackboneOptions
    ) -> ResNet12:
        return cls(image_shape, hparams.width, options.running_stats, options.features or "mean", hparams.dropblock)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)
