"""Meta-SGD (Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning).

MAML (:mod:`learners.maml`) whose scalar inner learning rate becomes a learned tensor ``α`` of the
same shape as each parameter (direction and size of the inner step per coordinate): a task
adapts with ``θ' = θ - α ⊙ ∇L_support(θ)`` and the outer Adam step updates ``θ`` and ``α``
together on the mean query loss of the adapted weights.

Choices made:

- One inner step at meta-training and at test time by default, as in the paper (``α`` is learned
  for exactly that step); more are allowed (``inner_steps``, ``test_inner_steps``).
- ``α`` starts uniformly at random in ``[alpha_low, alpha_high]`` (the paper: ``[0.005, 0.1]``);
  ``alpha_low == alpha_high`` gives a constant start. ``α`` is not constrained to stay positive
  (the paper does not constrain it: a negative coordinate is a learned step direction).
- The meta-gradient is second order (through the inner step) unless ``first_order``; it is
  computed by MAML's own :class:`~learners.meta_gradient.MetaGradient` with the per-parameter
  rate, so every MAML path (``loop``, ``vmap``, ``split``, ...) and MAML's ``"auto"`` choice apply.
- The network is MAML's (Li et al. use Finn's): Conv-4 (stride-2 by default) plus a ``ways``-way
  linear head on :func:`~learners.maml.finn_features`; batch-norm
  uses batch statistics at training and test time (transductive, like Finn's MAML).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from learners.backbone import DOWNSAMPLES, Downsample, adaptable_classifier
from learners.base import BackboneHyperparams, Learner
from learners.hparam_checks import at_least, one_of, path_or_auto, positive
from learners.maml import MAML, finn_features
from learners.meta_gradient import PATHS, MetaGradient
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch


@dataclass(frozen=True)
class MetaSGDHyperparams(BackboneHyperparams):
    meta_lr: float = 1e-3
    alpha_low: float = 0.005
    alpha_high: float = 0.1
    inner_steps: int = 1
    test_inner_steps: int = 1
    first_order: bool = False
    downsample: Downsample = "stride"
    path: str = "auto"

    def validate(self) -> None:
        super().validate()
        positive("meta_lr", self.meta_lr)
        at_least("alpha_low", self.alpha_low, 0)
        if self.alpha_high < self.alpha_low:
            raise ValueError(f"alpha_high must be >= alpha_low ({self.alpha_low:g}), got {self.alpha_high!r}")
        at_least("inner_steps", self.inner_steps, 1)
        at_least("test_inner_steps", self.test_inner_steps, 1)
        one_of("downsample", self.downsample, DOWNSAMPLES)
        path_or_auto("path", self.path, PATHS)


class MetaSGD(MAML):
    """MAML with a meta-learned per-parameter inner learning rate ``α`` (``self.alpha``)."""

    family: ClassVar[str] = "metasgd"
    paper: ClassVar[str] = "Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (arXiv:1707.09835)"
    Hyperparams = MetaSGDHyperparams  # type: ignore[assignment]  # not MAML's: a rate range instead of inner_lr

    search_space = {
        "meta_lr": Float(1e-4, 1e-2, log=True),
        "alpha_high": Float(0.01, 0.5, log=True),
        "inner_steps": Int(1, 3),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
    }

    def __init__(self, hparams: MetaSGDHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        Learner.__init__(self, hparams, image_shape, ways)  # MAML's own __init__ wants a scalar inner_lr
        self.net = adaptable_classifier(
            image_shape, hparams.width, hparams.depth, hparams.downsample, ways, finn_features(hparams.downsample)
        )
        names = [name for name, _ in self.net.named_parameters()]
        # One α per parameter tensor, in the order of ``net.named_parameters()`` (parameter names
        # contain dots, which a ParameterDict refuses).
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.empty_like(p).uniform_(hparams.alpha_low, hparams.alpha_high)) for p in self.net.parameters()
        )
        self.alpha_by_name = dict(zip(names, self.alpha, strict=True))  # the same Parameter objects, by name
        self.meta_gradient = MetaGradient(self.net, self.alpha_by_name, hparams.inner_steps, hparams.first_order)
        self.optimizer = torch.optim.Adam([*self.net.parameters(), *self.alpha], lr=hparams.meta_lr)
        self.chosen_path = None if hparams.path == "auto" else hparams.path
        self.path_timings_ms = {}

    @property
    def first_order(self) -> bool:
        return self.hparams.first_order

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.check_ways(batch.ways)
        if self.chosen_path is None:
            self.chosen_path = self.choose_path(batch)
        step = self.compute(self.chosen_path, batch)
        for name, param in self.net.named_parameters():
            param.grad = step.grads[name]
        assert step.lr_grads is not None, "a MetaGradient built with per-parameter rates returns their gradients"
        for name, alpha in self.alpha_by_name.items():
            alpha.grad = step.lr_grads[name]
        self.optimizer.step()
        accuracy = (step.logits.argmax(-1) == batch.query_y).float().mean()
        return {"loss": step.losses.mean().item(), "accuracy": accuracy.item()}

    # ``compute``, ``choose_path`` and ``predict`` are MAML's: the meta-gradient object carries α.
