"""Pre-train + fine-tune: Chen et al. 2019 (Baseline, Baseline++) and Tian et al. 2020 (RFS).

Meta-training is no meta-training at all: the backbone and a classifier over *all* training
classes are trained on ordinary shuffled mini-batches of the train split with their split-wide
labels (:class:`tasks.class_batches.ClassBatchSampler`, drawn through :meth:`training_sampler`),
cross-entropy and Adam. For a new task, :meth:`predict` throws that classifier away, embeds the
support and query images with the frozen backbone and fits a new ``ways``-class head on the
support embeddings, for every task of the batch at once (one Adam run over ``[tasks, ways, D]``
weights), then scores the query with it. Validation uses the same fixed episodes as every family.

The choices, by ``head`` and ``normalize``:

- ``head: linear``, ``normalize: false``: Chen's *Baseline*: a linear classifier while pre-training,
  a new linear head fitted by cross-entropy at test time.
- ``head: linear``, ``normalize: true`` (the default): Tian's *RFS*: the same pre-training, and a
  logistic regression on L2-normalised embeddings at test time (RFS's ``LR`` with ``normalize``).
- ``head: cosine``: Chen's *Baseline++*: logits are ``scale * cos(embedding, class weight)`` while
  pre-training and at test time, the new head's weights starting at the support's normalised class
  means (deterministic, and already a cosine nearest-mean classifier before its first step).

Departures, and why:

- Chen's Baseline++ code scales cosines by a fixed 2 (10 over 200 classes) with per-class learnable
  weight norms; here one learned scale (initialised to 10, as ProtoNet's cosine) does that job,
  and the test-time head keeps the pre-trained scale.
- The test-time head is fitted by ``head_steps`` full-batch Adam steps from zero (linear) with L2
  weight decay ``head_weight_decay`` (default 1e-3, Chen's), instead of Chen's 100 epochs of SGD
  (momentum 0.9) over the support set in shuffled mini-batches of 4 from a random start, or RFS's
  scikit-learn L-BFGS: batched over tasks on the learner's device, and deterministic (a task's
  logits depend on its support set alone, never on a random draw).
- Pre-training uses Adam at 1e-3 (Chen's choice) with ``weight_decay`` 0 (Chen's; RFS uses 5e-4 with
  SGD: both are in the search space); no data augmentation, no RFS self-distillation, no
  learning-rate schedule: budgets here are short.
- ``finetune_steps > 0`` also fine-tunes a copy of the backbone per task (after the head is fitted,
  jointly with it, Adam at ``finetune_lr``, batch-norm on its running statistics): the optional
  backbone fine-tuning the issue asks for, task by task, so slower by that many backward passes.

The backbone is the ``backbone`` hyperparameter's (:mod:`learners.backbones`): Chen's Conv-4 (max-pool
blocks, the flattened map) or RFS's ResNet-12 (the spatial mean of its 640-channel map at width 64,
DropBlock while pre-training with ``dropblock > 0``), both searched. Its batch-norm is the usual
kind (Chen's): batch statistics while pre-training, running averages in :meth:`predict`, so a
query's logits depend only on its task's support set.
The classifier is built by :meth:`training_sampler`, once the number of training classes is
known; a checkpoint holds it (and the optimizer), and :meth:`load_state_dict` rebuilds it at the
saved size before loading. An untrained learner predicts without one (``evaluate --untrained``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import DROPBLOCK_RATES, Backbone, backbone_names, build_backbone
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.hparam_checks import at_least, one_of, positive
from learners.metric import channels_last, embed_tasks, evaluating
from learners.space import Choice, Float, Int
from tasks.class_batches import ClassBatch, ClassBatchSampler
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.store import SplitStore

HEADS: tuple[str, ...] = ("linear", "cosine")
COSINE_INITIAL_SCALE = 10.0
CLASSIFIER_WEIGHT = "classifier.weight"


class FineTune(Learner):
    """Supervised pre-training over all training classes; a new head per task at test time."""

    family: ClassVar[str] = "finetune"
    trains_on_episodes: ClassVar[bool] = False
    paper: ClassVar[str] = (
        "Chen et al. 2019, A Closer Look at Few-shot Classification (ICLR): Baseline and Baseline++; "
        "Tian et al. 2020, Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need? (ECCV)"
    )

    @dataclass(frozen=True)
    class Hyperparams(BackboneHyperparams):
        lr: float = 1e-3
        weight_decay: float = 0.0
        batch_size: int = 64
        head: str = "linear"
        normalize: bool = True  # L2-normalise embeddings for the linear test-time head (RFS)
        head_steps: int = 100
        head_lr: float = 0.1
        head_weight_decay: float = 1e-3
        finetune_steps: int = 0  # test-time steps that also fine-tune the backbone (0: frozen)
        finetune_lr: float = 1e-3

        def validate(self) -> None:
            super().validate()
            positive("lr", self.lr)
            at_least("weight_decay", self.weight_decay, 0)
            at_least("batch_size", self.batch_size, 2)
            one_of("head", self.head, HEADS)
            at_least("head_steps", self.head_steps, 0)
            positive("head_lr", self.head_lr)
            at_least("head_weight_decay", self.head_weight_decay, 0)
            at_least("finetune_steps", self.finetune_steps, 0)
            positive("finetune_lr", self.finetune_lr)

    search_space = {
        "lr": Float(1e-4, 1e-2, log=True),
        "weight_decay": Choice((0.0, 1e-4, 5e-4)),
        "batch_size": Choice((32, 64, 128)),
        "head": Choice(HEADS),
        "normalize": Choice((True, False)),
        "head_steps": Choice((50, 100, 200)),
        "head_lr": Float(0.01, 1.0, log=True),
        "finetune_steps": Choice((0, 10)),
        "finetune_lr": Float(1e-4, 1e-2, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: Hyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.backbone: Backbone = build_backbone(hparams, self.image_shape, running_stats=True)
        if hparams.head == "cosine":
            self.scale = nn.Parameter(torch.tensor(COSINE_INITIAL_SCALE))
        self.classifier: nn.Linear | None = None  # one unit per training class: built by training_sampler
        channels_last(self)

    def training_sampler(self, split: SplitStore, spec: EpisodeSpec, tasks: int, seed: int) -> ClassBatchSampler:
        """Mini-batches of ``batch_size`` images of ``split`` (``spec`` and ``tasks`` do not apply), and a
        classifier over its classes when there is none yet (a resumed learner keeps its own)."""
        if self.classifier is None:
            self._build_classifier(split.num_classes)
        elif self.classifier.out_features != split.num_classes:
            raise ValueError(
                f"finetune was pre-trained on {self.classifier.out_features} classes, but split {split.name!r} "
                f"has {split.num_classes}: train a new model on this dataset"
            )
        return ClassBatchSampler(split, self.hparams.batch_size, seed)

    def _build_classifier(self, classes: int) -> None:
        """The pre-training classifier and the optimizer over every parameter, classifier included."""
        self.classifier = nn.Linear(self.backbone.embedding_dim, classes, bias=self.hparams.head == "linear")
        self.classifier.to(self.device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a checkpoint, building its classifier at the saved number of classes first."""
        weight = state_dict.get(CLASSIFIER_WEIGHT)
        if weight is not None and self.classifier is None:
            self._build_classifier(weight.shape[0])
        return super().load_state_dict(state_dict, strict, assign)

    def meta_train_step(self, batch: EpisodeBatch | ClassBatch) -> dict[str, float]:
        """One supervised step on a mini-batch of training images with their split-wide labels."""
        if not isinstance(batch, ClassBatch) or self.classifier is None:
            raise TypeError(
                "finetune trains on class mini-batches from its training_sampler(split, ...), which also "
                "builds its classifier; it cannot take a batch of episodes"
            )
        self.train()
        features = self.backbone(batch.images)
        if self.hparams.head == "cosine":
            logits = self.scale * F.normalize(features, dim=-1) @ F.normalize(self.classifier.weight, dim=-1).T
        else:
            logits = self.classifier(features)
        loss = F.cross_entropy(logits, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(-1) == batch.labels).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits ``[T, NQ, ways]`` of a head fitted on each task's support embeddings."""
        ways = episode_ways(support_y)
        with torch.no_grad(), evaluating(self):
            support, query = embed_tasks(self.backbone, support_x, query_x)
        weight, bias = self._fit_head(support, support_y, ways)
        if self.hparams.finetune_steps:
            return torch.cat(
                [
                    self._finetuned_logits(
                        support_x[t : t + 1], support_y[t : t + 1], query_x[t : t + 1], weight[t], bias[t]
                    )
                    for t in range(len(support_x))
                ]
            )
        with torch.no_grad():
            return self._head_logits(query, weight, bias)

    def _head_logits(self, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``[T, n, D]`` features -> ``[T, n, ways]`` logits of the per-task heads ``[T, ways, D]``, ``[T, ways]``."""
        if self.hparams.head == "cosine":
            scale = self.scale.detach()
            return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(1, 2)
        if self.hparams.normalize:
            features = F.normalize(features, dim=-1)
        return features @ weight.transpose(1, 2) + bias.unsqueeze(1)

    def _head_loss(
        self, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Each task's mean support cross-entropy, summed over tasks, plus the heads' L2 penalty."""
        logits = self._head_logits(features, weight, bias)
        cross_entropy = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / labels.shape[1]
        return cross_entropy + self.hparams.head_weight_decay * weight.square().sum()

    def _fit_head(self, support: torch.Tensor, support_y: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every task's new head, fitted on its (fixed) support embeddings by full-batch Adam."""
        tasks, _, dim = support.shape
        if self.hparams.head == "cosine":
            onehot = F.one_hot(support_y, ways).to(support.dtype)  # [T, S, ways]
            weight = onehot.transpose(1, 2) @ F.normalize(support, dim=-1) / onehot.sum(1).unsqueeze(-1)
        else:
            weight = support.new_zeros(tasks, ways, dim)
        bias = support.new_zeros(tasks, ways)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        optimizer = torch.optim.Adam([weight, bias], lr=self.hparams.head_lr)
        with torch.enable_grad():
            for _ in range(self.hparams.head_steps):
                loss = self._head_loss(support, support_y, weight, bias)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return weight.detach(), bias.detach()

    def _finetuned_logits(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """One task's query logits after ``finetune_steps`` joint steps of a backbone copy and its head."""
        backbone = copy.deepcopy(self.backbone).eval()  # running statistics: neither used nor changed per batch
        weight, bias = weight[None].clone().requires_grad_(True), bias[None].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([*backbone.parameters(), weight, bias], lr=self.hparams.finetune_lr)
        with torch.enable_grad():
            for _ in range(self.hparams.finetune_steps):
                features = backbone(support_x.flatten(0, 1)).unflatten(0, support_x.shape[:2])
                loss = self._head_loss(features, support_y, weight, bias)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            features = backbone(query_x.flatten(0, 1)).unflatten(0, query_x.shape[:2])
            return self._head_logits(features, weight, bias)
