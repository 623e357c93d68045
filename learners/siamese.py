"""Siamese networks (Koch, Zemel & Salakhutdinov 2015, Siamese Neural Networks for One-shot Image Recognition).

Twin embeddings with shared weights ``h(x) = sigmoid(W · conv(x) + c)`` and a learned weighted-L1
head ``p(x1, x2) = sigmoid(Σ_j α_j |h_j(x1) − h_j(x2)| + β)``, the probability that the two
images show the same character, trained with binary cross-entropy on same/different pairs.
One-shot classification picks the class of the most similar support image; with k shots a
class scores the mean similarity of its support images.

Choices made:

- The convolutional part is the shared backbone (:mod:`learners.backbones`: Conv-4 or ResNet-12,
  both searched) rather than Koch's larger network with 10x10/7x7/4x4 filters, so architectures
  compare on equal terms; the sigmoid
  fully-connected layer of ``embedding`` units on top is Koch's (4096 there).
- Pairs come from the images of each episode of the batch, support and query together
  (never across tasks: two tasks of a meta-batch may hold the same class under different
  labels). Every ordered pair of distinct images is used, and the loss weights positives
  and negatives equally (each set's mean binary cross-entropy, halved): the exact balanced
  expectation, with nothing sampled and no Python loop.
- Adam at ``lr`` instead of Koch's per-layer momentum SGD and L2 penalties; no affine
  distortions (the dataset builder owns augmentation, e.g. rotations as new classes).
- ``α`` is unconstrained, as in the paper. The head never builds the ``[pairs, embedding]``
  difference tensor: with ``α = α⁺ − α⁻`` (both non-negative), ``Σ α_j |a_j − b_j|`` is the
  L1 distance of ``α⁺ ⊙ a`` and ``α⁺ ⊙ b`` minus that of ``α⁻ ⊙ a`` and ``α⁻ ⊙ b``, two
  ``torch.cdist(p=1)`` calls whose memory is that of the ``[queries, supports]`` output.
- ``predict`` returns, per class, the log of its mean similarity (the log-sigmoid of the
  head's logit when there is one shot), so softmax/argmax rank classes as the paper's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import DROPBLOCK_RATES, backbone_names, build_backbone
from learners.base import BackboneHyperparams
from learners.hparam_checks import at_least, positive
from learners.metric import EpisodeLossLearner, channels_last, embed_tasks, one_hot_support
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch


@dataclass(frozen=True)
class SiameseHyperparams(BackboneHyperparams):
    lr: float = 1e-3
    embedding: int = 256  # sigmoid units of the twin embedding (Koch: 4096)

    def validate(self) -> None:
        super().validate()
        positive("lr", self.lr)
        at_least("embedding", self.embedding, 1)


class WeightedL1Head(nn.Module):
    """``Σ_j α_j |a_j − b_j| + β``: the logit of "same class" (symmetric in its two inputs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)  # weight = α, bias = β

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits for matching rows: ``a``, ``b`` ``[..., dim]`` -> ``[...]``."""
        return self.linear((a - b).abs()).squeeze(-1)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits for every pair: ``a [T, n, dim]``, ``b [T, m, dim]`` -> ``[T, n, m]``."""
        alpha = self.linear.weight[0]
        pos, neg = alpha.clamp(min=0), (-alpha).clamp(min=0)
        distance = torch.cdist(a * pos, b * pos, p=1) - torch.cdist(a * neg, b * neg, p=1)
        return distance + self.linear.bias


class Siamese(EpisodeLossLearner):
    """Koch's Siamese network: weighted-L1 similarity of twin embeddings, trained on pairs."""

    family: ClassVar[str] = "siamese"
    paper: ClassVar[str] = (
        "Koch, Zemel & Salakhutdinov 2015, Siamese Neural Networks for One-shot Image Recognition "
        "(ICML Deep Learning Workshop)"
    )
    Hyperparams = SiameseHyperparams
    search_space = {
        "lr": Float(1e-4, 1e-2, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
        "embedding": Choice((64, 128, 256, 512, 1024)),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: SiameseHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        conv = build_backbone(hparams, image_shape, running_stats=True)
        self.twin = nn.Sequential(conv, nn.Linear(conv.embedding_dim, hparams.embedding), nn.Sigmoid())
        self.head = WeightedL1Head(hparams.embedding)
        channels_last(self)
        self.make_optimizer()

    def scores(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        support, query = embed_tasks(self.twin, support_x, query_x)
        return class_log_similarity(self.head.pairwise(query, support), support_y)

    def episode_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced BCE over every same/different pair of the episode's images."""
        support, query = embed_tasks(self.twin, batch.support_x, batch.query_x)
        embeddings = torch.cat([support, query], dim=1)  # [T, M, D]
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)  # [T, M]
        logits = self.head.pairwise(embeddings, embeddings)  # [T, M, M]
        same = labels[:, :, None] == labels[:, None, :]
        distinct = ~torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
        positive, negative = (same & distinct).to(logits.dtype), (~same).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, positive, reduction="none")
        loss = 0.5 * ((bce * positive).sum() / positive.sum() + (bce * negative).sum() / negative.sum())
        shots = support.shape[1]
        query_logits = class_log_similarity(logits[:, shots:, :shots], batch.support_y)
        return loss, query_logits


def class_log_similarity(pair_logits: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """``log`` of each class's mean similarity ``sigmoid(logit)`` over its support images.

    ``pair_logits [T, NQ, S]`` (query x support head logits) -> ``[T, NQ, ways]``. Computed
    relative to each query's best pair, so similarities far below 1e-38 do not underflow
    to ``log 0`` for the classes that matter; a class whose every similarity is more than
    ~87 nats below the best one gets the smallest finite log instead of ``-inf``.
    """
    log_sim = F.logsigmoid(pair_logits)
    top = log_sim.amax(dim=-1, keepdim=True)
    onehot = one_hot_support(support_y, log_sim.dtype)  # [T, S, ways]
    mean = torch.bmm((log_sim - top).exp(), onehot) / onehot.sum(dim=1, keepdim=True).clamp(min=1)
    return mean.clamp(min=torch.finfo(mean.dtype).tiny).log() + top
