"""Relation networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018,
Learning to Compare: Relation Network for Few-Shot Learning).

An embedding module ``f`` maps images to feature maps (not flattened); a class is represented
by the element-wise SUM of its support images' feature maps (the paper's k-shot rule; one shot:
the map itself). A relation module ``g`` scores each (class, query) pair from the channel-wise
concatenation ``C(f(x_class), f(x_query))``: two conv blocks (3x3 conv, batch-norm, ReLU,
2x2 max-pool) and two fully connected layers (ReLU, then one sigmoid unit). Training regresses
the scores onto the one-hot query labels with mean squared error, with Adam.

Choices made:

- Embedding: the backbone's unflattened feature map (:mod:`learners.backbones`, ``features="map"``;
  its shape ``feature_shape`` sizes the relation module). With Conv-4: 3x3 conv, batch-norm, ReLU,
  ``width`` filters, max-pooling in the first two blocks only and ``depth - 2`` more blocks that
  keep the resolution, as in the paper (there: 4 blocks, 64 filters). Unlike the paper's Omniglot
  model, every convolution pads by 1, so 28x28 images give 7x7 maps (the paper's unpadded first
  blocks give 5x5); the relation module's pools take 7 -> 3 -> 1. With ResNet-12 (searched too):
  its 5x5 map at 84x84 (640 channels at width 64), as in ResNet-12 relation networks since.
- The relation module keeps the paper's sizes: ``width`` filters and ``hidden`` units (8), on
  ``2 x`` the backbone's channels. Each of its two max-pools halves a map of at least 2x2 and is
  left out on a 1x1 map (ResNet-12 at 28x28), so every backbone and image size works.
- ``C(class, query)`` is concatenated in the paper's order (class first). Its first
  convolution is linear, so it is computed as ``conv_class(class) + conv_query(query)`` with the
  two halves of the one weight tensor: the class half runs once per class and the query half
  once per query, instead of once per pair, and the ``[pairs, 2·width, h, w]`` concatenation is
  never built. This is exact (zero padding commutes with the split), and is checked against
  the literal concatenation in the tests.
- ``predict`` returns the relation module's pre-sigmoid output (the score's logit): same
  ranking as the score. There (no autograd, eval mode) the pairs go through the relation
  module in chunks of at most ``predict_pairs`` (default ``PREDICT_PAIRS``); batch-norm uses
  running statistics in eval mode, so chunking is exact, and a 50-task 20-way 15-query
  evaluation batch (300,000 pairs) never holds all pairs' activations at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import DROPBLOCK_RATES, backbone_names, build_backbone
from learners.base import BackboneHyperparams
from learners.hparam_checks import at_least, positive
from learners.metric import EpisodeLossLearner, channels_last, embed_tasks, one_hot_support
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch

POOLED_BLOCKS = 2  # embedding blocks that halve the resolution (Sung et al.: the first two)
PREDICT_PAIRS = 16384  # most (class, query) pairs per relation-module call without autograd


@dataclass(frozen=True)
class RelationHyperparams(BackboneHyperparams):
    lr: float = 1e-3
    hidden: int = 8  # units of the relation module's first fully connected layer

    def validate(self) -> None:
        super().validate()
        positive("lr", self.lr)
        at_least("depth", self.depth, POOLED_BLOCKS)  # its pooled blocks
        at_least("hidden", self.hidden, 1)


def _block(channels_in: int, channels_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
    ]
    layers += [nn.MaxPool2d(2), nn.ReLU()] if pool else [nn.ReLU()]  # pool, then ReLU: exact, as in Conv4
    return nn.Sequential(*layers)


class RelationModule(nn.Module):
    """``g``: (class map, query map) pairs -> relation logit (pre-sigmoid score)."""

    def __init__(self, channels: int, width: int, map_hw: tuple[int, int], hidden: int) -> None:
        super().__init__()
        pool1 = min(map_hw) >= 2
        after1 = (map_hw[0] // 2, map_hw[1] // 2) if pool1 else map_hw
        pool2 = min(after1) >= 2
        height, wide = (after1[0] // 2, after1[1] // 2) if pool2 else after1
        self.channels = channels
        self.conv1 = nn.Conv2d(2 * channels, width, 3, padding=1, bias=False)  # on C(class, query); BN follows
        self.rest1 = nn.Sequential(nn.BatchNorm2d(width), nn.MaxPool2d(2) if pool1 else nn.Identity(), nn.ReLU())
        self.block2 = _block(width, width, pool=pool2)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(width * height * wide, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def halves(self, classes: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first convolution's class and query halves: ``[T, N, w, h, w]``, ``[T, Q, w, h, w]``."""
        weight_class, weight_query = self.conv1.weight.split(self.channels, dim=1)
        c = F.conv2d(classes.flatten(0, 1), weight_class, padding=1).unflatten(0, classes.shape[:2])
        q = F.conv2d(queries.flatten(0, 1), weight_query, padding=1).unflatten(0, queries.shape[:2])
        return c, q

    def pairs(self, class_half: torch.Tensor, query_half: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, Q, N]`` of every (query, class) pair from the two halves."""
        first = query_half[:, :, None] + class_half[:, None, :]  # [T, Q, N, w, h, w]
        out = self.fc(self.block2(self.rest1(first.flatten(0, 2))))
        return out.view(first.shape[:3])

    def forward(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``classes [T, N, w, h, w]``, ``queries [T, Q, w, h, w]`` -> logits ``[T, Q, N]``."""
        return self.pairs(*self.halves(classes, queries))

    def concatenated(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """The same logits from the literal concatenation ``C(class, query)`` (slow; a reference)."""
        tasks, ways, queries_n = classes.shape[0], classes.shape[1], queries.shape[1]
        pair = torch.cat(
            [
                classes[:, None].expand(-1, queries_n, -1, -1, -1, -1),
                queries[:, :, None].expand(-1, -1, ways, -1, -1, -1),
            ],
            dim=3,
        )
        out = self.fc(self.block2(self.rest1(self.conv1(pair.flatten(0, 2)))))
        return out.view(tasks, queries_n, ways)


class Relation(EpisodeLossLearner):
    """Relation network: learned relation scores on concatenated class/query feature maps."""

    family: ClassVar[str] = "relation"
    paper: ClassVar[str] = (
        "Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018, "
        "Learning to Compare: Relation Network for Few-Shot Learning (CVPR)"
    )
    Hyperparams = RelationHyperparams
    search_space = {
        "lr": Float(1e-4, 1e-2, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 5),
        "hidden": Choice((8, 16, 32, 64)),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: RelationHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.encoder = build_backbone(
            hparams, image_shape, running_stats=True, features="map", pooled_blocks=POOLED_BLOCKS
        )
        channels, height, wide = self.encoder.feature_shape
        self.map_hw = (height, wide)
        self.relation = RelationModule(channels, hparams.width, self.map_hw, hparams.hidden)
        if hparams.backbone == "conv4":
            self._register_load_state_dict_pre_hook(_conv4_names_before_backbones)
        self.predict_pairs = PREDICT_PAIRS
        channels_last(self)
        self.make_optimizer()

    def features(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class feature maps ``[T, N, w, h, w]`` (each the SUM of its support images' maps) and
        query feature maps ``[T, Q, w, h, w]``."""
        support, query = embed_tasks(self.encoder, support_x, query_x)
        onehot = one_hot_support(support_y, support.dtype)  # [T, S, N]
        classes = torch.einsum("tsn,tschw->tnchw", onehot, support)
        return classes, query

    def scores(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        classes, query = self.features(support_x, support_y, query_x)
        class_half, query_half = self.relation.halves(classes, query)
        if torch.is_grad_enabled() or self.training:  # batch-norm on batch statistics: one batch
            return self.relation.pairs(class_half, query_half)
        tasks, ways = class_half.shape[:2]
        chunk = max(1, self.predict_pairs // (tasks * ways))
        return torch.cat([self.relation.pairs(class_half, q) for q in query_half.split(chunk, dim=1)], dim=1)

    def episode_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared error of the relation scores against the one-hot query labels."""
        logits = self.scores(batch.support_x, batch.support_y, batch.query_x)
        target = F.one_hot(batch.query_y, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(torch.sigmoid(logits), target), logits


_OLD_POOLED = re.compile(r"encoder\.0\.(\d+)\.")  # the pooled blocks, a Sequential of their own until issue 13
_OLD_UNPOOLED = re.compile(r"encoder\.([1-9]\d*)\.")  # the blocks after them


def _conv4_names_before_backbones(state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Rename a checkpoint's Conv-4 encoder weights from before :mod:`learners.backbones` (``encoder.0.i.``
    for the pooled blocks, ``encoder.j.`` for the rest) to Conv-4's own names (``encoder.blocks.k.``), so
    relation checkpoints written before it still load. The values are the same network's."""
    for key in [k for k in state if k.startswith(prefix + "encoder.") and not k.startswith(prefix + "encoder.blocks.")]:
        rest = key[len(prefix) :]
        pooled, unpooled = _OLD_POOLED.match(rest), _OLD_UNPOOLED.match(rest)
        if pooled:
            new = f"encoder.blocks.{pooled.group(1)}." + rest[pooled.end() :]
        elif unpooled:
            new = f"encoder.blocks.{int(unpooled.group(1)) + POOLED_BLOCKS - 1}." + rest[unpooled.end() :]
        else:
            continue
        state[prefix + new] = state.pop(key)
