"""Prototypical networks (Snell, Swersky & Zemel 2017).

The backbone (:mod:`learners.backbones`: Conv-4 with 2x2 max-pool blocks as in the paper, or
ResNet-12 as in Lee et al. 2019 and Tian et al. 2020, both searched) embeds every image; a class's prototype is the
mean embedding of its support images, and a query's logits are its negative squared Euclidean
distances to the prototypes (``distance="cosine"``: cosine similarity times a learned scale,
initialised to 10, since raw cosines in [-1, 1] make too flat a softmax).

Training as in the paper: Adam, learning rate halved every ``lr_decay_every`` meta-updates
(Snell: every 2000 episodes, one episode per update), and optionally more ways than tested
(``train_ways``; Snell trained Omniglot with 60). Batch-norm is the ordinary kind: batch
statistics in :meth:`meta_train_step`, running averages in :meth:`predict`.

All tasks of a batch go through the backbone in one forward pass (channels-last weights, see
:func:`learners.metric.channels_last`); prototypes and distances are batched matrix products over
the task axis. ``docs/metric-speed.md`` has the measurements against a plain per-task loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import DROPBLOCK_RATES, backbone_names, build_backbone
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.hparam_checks import at_least, one_of, positive
from learners.metric import channels_last
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch, EpisodeSpec

DISTANCES: tuple[str, ...] = ("sqeuclidean", "cosine")
COSINE_INITIAL_SCALE = 10.0


class ProtoNet(Learner):
    """Prototypical network on the backbone's embedding."""

    family: ClassVar[str] = "protonet"
    paper: ClassVar[str] = "Snell, Swersky & Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS)"

    @dataclass(frozen=True)
    class Hyperparams(BackboneHyperparams):
        lr: float = 1e-3
        lr_decay_every: int = 2000
        train_ways: int = 0  # 0: train with the configured ways
        distance: str = "sqeuclidean"

        def validate(self) -> None:
            super().validate()
            positive("lr", self.lr)
            at_least("lr_decay_every", self.lr_decay_every, 1)
            at_least("train_ways", self.train_ways, 0)
            one_of("distance", self.distance, DISTANCES)

    search_space = {
        "lr": Float(1e-4, 1e-2, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
        "train_ways": Choice((0, 20, 60)),
        "distance": Choice(DISTANCES),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: Hyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.encoder = build_backbone(hparams, image_shape, running_stats=True)
        if hparams.distance == "cosine":
            self.scale = nn.Parameter(torch.tensor(COSINE_INITIAL_SCALE))
        channels_last(self)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, hparams.lr_decay_every, gamma=0.5)

    def training_spec(self, spec: EpisodeSpec) -> EpisodeSpec:
        return EpisodeSpec(self.hparams.train_ways or spec.ways, spec.shots, spec.query)

    def logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Query logits ``[T, NQ, ways]``; one backbone pass over every task's images."""
        tasks, n_support = support_x.shape[:2]
        images = torch.cat([support_x, query_x], dim=1).flatten(0, 1)
        embeddings = self.encoder(images).unflatten(0, (tasks, -1))
        support, query = embeddings[:, :n_support], embeddings[:, n_support:]
        onehot = F.one_hot(support_y, ways).to(support.dtype)  # [T, NK, ways]
        prototypes = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # [T, ways, D]
        if self.hparams.distance == "cosine":
            return self.scale * F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        return -squared_distances(query, prototypes)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.train()
        logits = self.logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item(), "lr": lr}

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits with batch-norm running statistics; no graph."""
        self.eval()
        with torch.no_grad():
            return self.logits(support_x, support_y, query_x, episode_ways(support_y))

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "scheduler": self.scheduler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a_i - b_j|²`` for batched rows: ``[T, n, D] x [T, m, D] -> [T, n, m]``.

    Expanded as ``|a|² - 2 a·b + |b|²`` (one batched matmul instead of a ``[T, n, m, D]``
    difference tensor, which 60-way training would make large), clamped at 0 against rounding.
    """
    cross = a @ b.transpose(1, 2)
    return (a.square().sum(-1, keepdim=True) - 2 * cross + b.square().sum(-1).unsqueeze(1)).clamp_min(0)
