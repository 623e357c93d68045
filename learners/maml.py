"""MAML and first-order MAML (Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning).

Meta-parameters: a backbone (:mod:`learners.backbones`; Conv-4 by default, stride-2 convolutions,
Finn's Omniglot model) and a linear head with ``ways`` outputs (on :func:`finn_features`). Each
task adapts a copy with ``inner_steps`` SGD steps of size ``inner_lr`` on its support set (Finn,
Omniglot 5-way: 0.4, 1 step); the meta-update is Adam (``meta_lr``, Finn: 1e-3) on the mean query
loss, differentiated through the inner loop (second order) or not (``first_order``; FOMAML).
Evaluation adapts with ``test_inner_steps`` (Finn: 10).

The head reads what Finn's code feeds it: with stride-2 convolutions (Omniglot) the last feature
map averaged over its positions (``width`` numbers), with max-pooling (miniImageNet) the flattened
map. Flattening the Omniglot model's 2x2 map instead (as this module did until issue 19) gives the
head 4x the inputs and makes Finn's inner step of 0.4 several times larger in effect: at
initialisation (64 filters, 5-way 1-shot, 32 tasks) it moved the head by 113% of its norm and the
last three convolutions by 55-80%, so the first-order meta-gradient, the query gradient at weights
that far away, pointed against the true one (cosine -0.26; 0.41 with the mean). An independent
first-order MAML reached a training accuracy of 0.39 in 110 meta-iterations with the flattened head
and 0.73 with the mean (this module: 0.72; ``learn2tune bench fomaml-reference --flattened``,
``tests/test_fomaml_reference.py``). Second order follows the inner step exactly and did not suffer.

Backbones: MAML (second order) does not search ``backbone``: differentiating through the inner loop
of a ResNet-12 (12.4M weights at width 64) costs memory on the order of the adapted weights per task
and step; set ``backbone: resnet12`` (and a ``memory_limit``) to get it anyway. FOMAML, first order
and so as lean as plain training, searches Conv-4 and ResNet-12. No DropBlock in either
(``dropblock`` must be 0): the network is a pure function for ``torch.func``.

Batch-norm always uses the statistics of the batch it sees, as Finn's code does: the model is
transductive (query logits depend on the task's other query images) and keeps no running stats.

The meta-gradient has several equal formulations (:mod:`learners.meta_gradient`); the
``path`` hyperparameter picks one. ``"auto"`` decides on the first meta-batch (without applying
anything) and keeps its choice for the life of the learner (:class:`~learners.auto_path.AutoPath`,
``self.paths``): on a GPU it times the candidates and keeps the fastest; on a CPU it takes the
first candidate that runs, untimed, because the formulations agree only to rounding and a timed
choice would keep a CPU run from repeating to the last digit. ``memory_limit`` (e.g. ``"2GiB"``)
makes it choose among the candidates whose peak memory on that batch fits.

The inner update rule is a hook: :meth:`MAML.inner_learning_rate` gives the scalar ``inner_lr``;
Meta-SGD (:mod:`learners.metasgd`) overrides it with learned per-parameter rates, and the
meta-gradient with respect to them is applied by the same :meth:`MAML.meta_train_step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from learners.auto_path import AutoPath, AutoPolicy
from learners.backbones import adaptable_classifier, backbone_names
from learners.backbones.base import Features
from learners.backbones.conv4 import DOWNSAMPLES, Downsample
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.hparam_checks import at_least, no_dropblock, one_of, path_or_auto, positive, size_or_unset
from learners.meta_gradient import PATHS, InnerLR, MetaGradient, MetaStep
from learners.peak_memory import parse_size
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch

# Candidates of "auto". A GPU times every path (3 timed runs each after one warm-up, which includes
# any compilation; the lowest time wins: on a shared machine load only ever adds time). A CPU takes
# the first that runs, in order of measured speed there (README, Benchmarks); the vmap-ed paths are
# left out, their grouped convolutions measured 2-3x slower than a task loop on a CPU.
AUTO_POLICY = AutoPolicy(untimed=("split-compiled", "split", "loop"), timed=PATHS, timed_runs=3, statistic=min)


@dataclass(frozen=True)
class InnerLoopHyperparams(BackboneHyperparams):
    """What every learner built on :class:`MAML` sets (MAML, FOMAML, Meta-SGD): the outer Adam step,
    the inner loop's length in training and at test time, the network and the meta-gradient path."""

    meta_lr: float = 1e-3
    inner_steps: int = 1
    test_inner_steps: int = 10
    downsample: Downsample = "stride"
    path: str = "auto"
    memory_limit: str = ""  # e.g. "2GiB": "auto" then takes only a path whose peak memory fits; "": no limit

    def validate(self) -> None:
        super().validate()
        positive("meta_lr", self.meta_lr)
        at_least("inner_steps", self.inner_steps, 1)
        at_least("test_inner_steps", self.test_inner_steps, 1)
        one_of("downsample", self.downsample, DOWNSAMPLES)
        path_or_auto("path", self.path, PATHS)
        size_or_unset("memory_limit", self.memory_limit)
        no_dropblock("dropblock", self.dropblock)


@dataclass(frozen=True)
class MAMLHyperparams(InnerLoopHyperparams):
    """Shared by MAML and FOMAML: one scalar inner step size."""

    inner_lr: float = 0.4

    def validate(self) -> None:
        super().validate()
        positive("inner_lr", self.inner_lr)


class MAML(Learner):
    """Second-order MAML (first order with ``first_order=True``)."""

    family: ClassVar[str] = "maml"
    paper: ClassVar[str] = (
        "Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)"
    )
    fixed_ways: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Hyperparams(MAMLHyperparams):
        first_order: bool = False

    search_space = {
        "meta_lr": Float(1e-4, 1e-2, log=True),
        "inner_lr": Float(1e-2, 1.0, log=True),
        "inner_steps": Int(1, 5),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
    }  # no backbone: second order through ResNet-12 (12.4M weights) costs memory; FOMAML searches it

    def __init__(self, hparams: MAMLHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.net = adaptable_classifier(
            hparams, image_shape, ways, downsample=hparams.downsample, features=finn_features(hparams)
        )
        self.meta_gradient = MetaGradient(self.net, self.inner_learning_rate(), hparams.inner_steps, self.first_order)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams.meta_lr)
        limit = parse_size(hparams.memory_limit) if hparams.memory_limit else None
        self.paths = AutoPath(self.family, hparams.path, AUTO_POLICY, limit)

    def inner_learning_rate(self) -> InnerLR:
        """The inner update's rate: the scalar ``inner_lr`` (Meta-SGD: learned, per parameter)."""
        return self.hparams.inner_lr

    @property
    def first_order(self) -> bool:
        return self.hparams.first_order

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.check_ways(batch.ways)
        path = self.paths.path(self.device, lambda path: self.compute(path, batch))
        step = self.compute(path, batch)
        for name, param in self.net.named_parameters():
            param.grad = step.grads[name]
        if step.lr_grads is not None:  # learned inner rates (Meta-SGD): the same Parameters, by name
            rates = self.meta_gradient.inner_lr
            assert isinstance(rates, Mapping)
            for name, rate in rates.items():
                rate.grad = step.lr_grads[name]
        self.optimizer.step()
        accuracy = (step.logits.argmax(-1) == batch.query_y).float().mean()
        return {"loss": step.losses.mean().item(), "accuracy": accuracy.item()}

    def compute(self, path: str, batch: EpisodeBatch) -> MetaStep:
        """The meta-gradient of ``batch`` by ``path``, without applying it."""
        params: dict[str, torch.Tensor] = dict(self.net.named_parameters())
        return self.meta_gradient(path, params, batch.support_x, batch.support_y, batch.query_x, batch.query_y)

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Adapt on each task's support set (``test_inner_steps`` steps), then score its queries.

        Returns logits without a graph; works under ``torch.no_grad`` and ``torch.inference_mode``.
        """
        self.check_ways(episode_ways(support_y))
        params = {k: p.detach() for k, p in self.net.named_parameters()}
        with torch.no_grad():
            adapted = self.meta_gradient.adapt_tasks(params, support_x, support_y, self.hparams.test_inner_steps)
            return torch.stack(
                [
                    torch.func.functional_call(self.net, {k: p[t] for k, p in adapted.items()}, (x,))
                    for t, x in enumerate(query_x)
                ]
            )


class FOMAML(MAML):
    """First-order MAML: MAML with ``first_order`` fixed (Finn et al. 2017, section 5.2)."""

    family: ClassVar[str] = "fomaml"
    Hyperparams = MAMLHyperparams  # type: ignore[assignment]  # MAML.Hyperparams less its first_order field
    search_space = {**MAML.search_space, "backbone": Choice(backbone_names())}

    @property
    def first_order(self) -> bool:
        return True


def finn_features(hparams: MAMLHyperparams | BackboneHyperparams) -> Features | None:
    """What the head reads. Conv-4: as in Finn's network (cbfinn/maml, ``forward_conv``), the spatial mean
    of the last feature map in the Omniglot model (stride-2 convolutions), the flattened map in the
    miniImageNet one. Another backbone: its own default (ResNet-12: the global average, 640 numbers)."""
    if hparams.backbone != "conv4":
        return None
    return "mean" if getattr(hparams, "downsample", "pool") == "stride" else "flatten"
