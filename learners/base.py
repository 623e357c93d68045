"""The contract every learner family fulfils.

A family is a :class:`Learner` subclass with

- ``family``: its registry name, ``paper``: the paper it implements;
- ``Hyperparams``: a frozen dataclass of its hyperparameters, every field with a default, that
  checks its own values (ranges, choices) in ``validate`` (see :class:`BackboneHyperparams`);
- ``search_space``: ranges for the fields the search may tune (keys are ``Hyperparams`` fields);
- ``meta_train_step(batch)``: one meta-update on a batch of training episodes (or on whatever
  batch its ``training_sampler`` draws: the ``finetune`` family trains on plain mini-batches);
- ``predict(support_x, support_y, query_x)``: logits for the query of each task, adapting
  on the support set first when the family adapts. Evaluation and the served model both use
  this one path.

The learner owns its meta-parameters and its meta-optimizer; ``state_dict`` holds both, so a
checkpoint resumes training exactly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from learners.backbones import backbone_names
from learners.hparam_checks import at_least, below_one, one_of
from learners.space import SearchSpace
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.store import SplitStore


class TrainingSampler(Protocol):
    """What the meta-training loop draws each step's batch from (a batch has ``.to(device)``)."""

    def sample(self) -> Any: ...


@dataclass(frozen=True)
class BackboneHyperparams:
    """The backbone every family builds its embedding from (:mod:`learners.backbones`) and its knobs.

    ``backbone``: a registered name (``conv4``, ``resnet12``). ``width``: the first stage's filters
    (Conv-4: every block's; ResNet-12: ``width x (1, 2.5, 5, 10)``). ``depth``: Conv-4's blocks.
    ``dropblock``: ResNet-12's drop rate (dropout, DropBlock in its last two blocks; 0 = off). A
    backbone ignores the knobs that are not its own.

    Every family's hyperparameter dataclass derives from this one and checks its own values in
    :meth:`validate`, which runs on construction: no instance holds a value its learner cannot use.
    """

    width: int = 64
    depth: int = 4
    backbone: str = "conv4"
    dropblock: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value the family cannot use (ranges,
        choices). A subclass extends it, calling ``super().validate()`` first."""
        at_least("width", self.width, 1)
        at_least("depth", self.depth, 1)
        one_of("backbone", self.backbone, backbone_names())
        below_one("dropblock", self.dropblock)


class Learner(nn.Module, abc.ABC):
    """Base class of a meta-learner family (see the module docstring for the contract)."""

    family: ClassVar[str]
    paper: ClassVar[str]
    Hyperparams: ClassVar[type]
    search_space: ClassVar[SearchSpace] = {}
    optimizer: torch.optim.Optimizer  # the meta-optimizer, built by each family's __init__
    fixed_ways: ClassVar[bool] = False  # one output unit per way: scores only ``ways``-way episodes
    trains_on_episodes: ClassVar[bool] = True  # False: its training_sampler draws something else (finetune)

    def __init__(self, hparams: Any, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__()
        self.hparams = hparams
        channels, height, width = image_shape  # a list when read back from JSON
        self.image_shape = (channels, height, width)
        self.ways = ways

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abc.abstractmethod
    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One meta-update on ``batch`` (already on this learner's device, float images).

        Returns at least ``loss`` and ``accuracy`` (query accuracy of the batch, in [0, 1]).
        """

    @abc.abstractmethod
    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[tasks, queries, ways]`` for batched tasks (``ways`` from ``support_y``)."""

    def training_spec(self, spec: EpisodeSpec) -> EpisodeSpec:
        """The episodes this family trains on, given the configured ones.

        Most families train on the test-time shape; ProtoNet, for one, trains with more ways.
        """
        return spec

    def training_sampler(self, split: SplitStore, spec: EpisodeSpec, tasks: int, seed: int) -> TrainingSampler:
        """Where the loop draws this family's training batches: ``tasks`` episodes of ``spec`` (already
        :meth:`training_spec`) per step from ``split``, seeded, by default.

        Called once before the first step of a run (and of a resumed run). A family that trains on
        something else returns its own sampler, and may size modules by ``split`` here (``finetune``'s
        classifier has one unit per training class).
        """
        return EpisodeSampler(split, spec, tasks=tasks, seed=seed)

    def check_ways(self, ways: int) -> None:
        """Refuse episodes a fixed-size output head (:attr:`fixed_ways`) cannot score."""
        if self.fixed_ways and ways != self.ways:
            raise ValueError(
                f"{self.family} was built for {self.ways}-way episodes with a {self.ways}-way output head and "
                f"cannot score {ways}-way episodes; train a {ways}-way {self.family} model for them"
            )

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state a checkpoint must keep (the meta-optimizer, by default)."""
        optimizer = getattr(self, "optimizer", None)
        return {"optimizer": optimizer.state_dict()} if optimizer is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so a timer measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def episode_ways(support_y: torch.Tensor) -> int:
    """Number of classes in an episode from its (0-based, complete) support labels."""
    return int(support_y.max().item()) + 1
