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
- Meta-SGD is MAML with one hook overridden: :meth:`MetaSGD.inner_learning_rate` supplies ``α``
  instead of the scalar ``inner_lr``. The meta-gradient is second order (through the inner step)
  unless ``first_order``; MAML's own :class:`~learners.meta_gradient.MetaGradient` computes it with
  the per-parameter rate, also ``∂L_q/∂α``, which MAML's ``meta_train_step`` applies to ``α``; so
  every MAML path (``loop``, ``vmap``, ``split``, ...), MAML's ``"auto"`` choice and its
  ``memory_limit`` apply.
- The network is MAML's (Li et al. use Finn's): the backbone (Conv-4, stride-2 by default) plus a
  ``ways``-way linear head on :func:`~learners.maml.finn_features`; batch-norm uses batch statistics
  at training and test time (transductive, like Finn's MAML). ``backbone`` is not searched, as in
  MAML: second order by default, and ``α`` doubles the weights (ResNet-12: 2 x 12.4M); it may be set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from learners.hparam_checks import at_least
from learners.maml import MAML, InnerLoopHyperparams
from learners.meta_gradient import InnerLR
from learners.space import Choice, Float, Int


@dataclass(frozen=True)
class MetaSGDHyperparams(InnerLoopHyperparams):
    """MAML's, with the range ``α`` starts in instead of ``inner_lr``; one test-time step, as trained."""

    alpha_low: float = 0.005
    alpha_high: float = 0.1
    test_inner_steps: int = 1
    first_order: bool = False

    def validate(self) -> None:
        super().validate()
        at_least("alpha_low", self.alpha_low, 0)
        if self.alpha_high < self.alpha_low:
            raise ValueError(f"alpha_high must be >= alpha_low ({self.alpha_low:g}), got {self.alpha_high!r}")


class MetaSGD(MAML):
    """MAML with a meta-learned per-parameter inner learning rate ``α`` (``self.alpha``)."""

    family: ClassVar[str] = "metasgd"
    paper: ClassVar[str] = (
        "Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (arXiv:1707.09835)"
    )
    Hyperparams = MetaSGDHyperparams  # type: ignore[assignment]  # not MAML's: a rate range instead of inner_lr

    search_space = {
        "meta_lr": Float(1e-4, 1e-2, log=True),
        "alpha_high": Float(0.01, 0.5, log=True),
        "inner_steps": Int(1, 3),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
    }

    def inner_learning_rate(self) -> InnerLR:
        """``α``: one learned tensor per parameter tensor, in the order of ``net.named_parameters()``
        (a ParameterList: parameter names contain dots, which a ParameterDict refuses); returned by
        name, the same Parameter objects, which the meta-optimizer updates in place."""
        low, high = self.hparams.alpha_low, self.hparams.alpha_high  # checked by MetaSGDHyperparams
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.empty_like(p).uniform_(low, high)) for p in self.net.parameters()
        )
        names = [name for name, _ in self.net.named_parameters()]
        return dict(zip(names, self.alpha, strict=True))
