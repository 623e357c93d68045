"""Reptile (Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms).

Each task of a meta-batch starts from the meta-parameters ``θ`` and takes ``inner_steps`` steps of
SGD or Adam (``inner_optimizer``) on minibatches of ``inner_batch`` examples drawn from all of the
task's data (support and query together, as the paper trains on a task's whole sample), giving
``φ_t``. The outer step moves ``θ`` toward the mean adapted weights,
``θ <- θ + ε (mean_t φ_t - θ)`` with ``ε = outer_lr``; it is applied by ``self.optimizer`` (plain
SGD with learning rate ``ε``) fed the "gradient" ``θ - mean_t φ_t``, as the paper describes.

Choices made:

- Network: the backbone (:mod:`learners.backbones`; Conv-4 with stride-2 convolutions by default,
  Nichol's Omniglot model, or ResNet-12: both searched, Reptile being first order) and a ``ways``-way
  linear head; no DropBlock (``dropblock`` must be 0: the network is adapted under ``torch.func``).
  Defaults follow Nichol's Omniglot settings: Adam, ``inner_lr`` 1e-3, 5 inner steps
  of 10 examples, ``ε`` 1.0, 50 fine-tuning steps at test time. The paper anneals ``ε`` linearly
  to 0 over its fixed number of meta-iterations; a learner does not know that number, so ``ε`` is
  constant here (annealing is a scheduler's job).
- Inner Adam is functional and starts from a fresh state for every task (so tasks are
  independent and can be vectorised), with ``β1 = 0`` as in the paper's experiments.
  Minibatches: each task's examples are shuffled and cut into batches in order, reshuffling when
  exhausted (sampling without replacement within a pass), from the global torch generator.
- All tasks adapt in one call: ``vmap`` over the task axis of the shared adaptation step, or a
  loop over tasks (the ``path`` hyperparameter; ``"auto"`` times both on the first meta-batch and
  keeps the faster on a GPU, and takes ``vmap`` untimed on a CPU, so that a CPU run repeats to
  the last digit). Gradients come from MAML's functional
  :class:`~learners.meta_gradient.MetaGradient` (its ``loss`` and its SGD ``step``).
- ``predict`` fine-tunes on the whole support set every step (``test_inner_steps``) with the same
  inner optimizer, then scores the queries. Batch-norm always uses batch statistics and keeps no
  running averages; by default scoring is *non-transductive*, as the paper's reported Omniglot
  results: each query image is scored in a batch made of the support set plus that one image,
  so a query's logits never depend on the other queries. ``transductive=True`` scores all queries
  of a task as one batch instead.
- ``meta_train_step`` reports the loss and accuracy of each task's last inner minibatch (before
  its update), averaged over tasks: Reptile has no held-out query evaluation while training.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call, grad_and_value, vmap

from learners.auto_path import AutoPath, AutoPolicy
from learners.backbones import adaptable_classifier, backbone_names
from learners.backbones.conv4 import DOWNSAMPLES, Downsample
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.hparam_checks import at_least, no_dropblock, one_of, path_or_auto, positive
from learners.meta_gradient import MetaGradient, Params
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch

PATHS: tuple[str, ...] = ("loop", "vmap")
# "auto": on a CPU the first of (vmap, loop) that runs, untimed; on a GPU the faster (median of 2 timed runs)
AUTO_POLICY = AutoPolicy(untimed=("vmap", "loop"), timed=PATHS, timed_runs=2, statistic=statistics.median)
INNER_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
ADAM_BETAS = (0.0, 0.999)  # β1 = 0 as in Nichol et al.'s experiments
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class ReptileHyperparams(BackboneHyperparams):
    inner_optimizer: str = "adam"
    inner_lr: float = 1e-3
    inner_steps: int = 5
    inner_batch: int = 10
    test_inner_steps: int = 50
    outer_lr: float = 1.0
    transductive: bool = False
    downsample: Downsample = "stride"
    path: str = "auto"

    def validate(self) -> None:
        super().validate()
        one_of("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        positive("inner_lr", self.inner_lr)
        for name in ("inner_steps", "inner_batch", "test_inner_steps"):
            at_least(name, getattr(self, name), 1)
        positive("outer_lr", self.outer_lr)
        one_of("downsample", self.downsample, DOWNSAMPLES)
        path_or_auto("path", self.path, PATHS)
        no_dropblock("dropblock", self.dropblock)


class Reptile(Learner):
    """Reptile with SGD or Adam inner steps; the meta-parameters are ``self.net``'s."""

    family: ClassVar[str] = "reptile"
    paper: ClassVar[str] = "Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms (arXiv:1803.02999)"
    fixed_ways: ClassVar[bool] = True
    Hyperparams = ReptileHyperparams

    search_space = {
        "inner_optimizer": Choice(INNER_OPTIMIZERS),
        "inner_lr": Float(1e-4, 1e-1, log=True),
        "inner_steps": Int(1, 16),  # the paper runs 5-12
        "inner_batch": Choice((5, 10, 20)),
        "outer_lr": Float(0.1, 1.0, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
        "backbone": Choice(backbone_names()),
    }

    def __init__(self, hparams: ReptileHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.net = adaptable_classifier(hparams, image_shape, ways, downsample=hparams.downsample)
        self.inner = MetaGradient(self.net, hparams.inner_lr, hparams.inner_steps, first_order=True)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=hparams.outer_lr)
        self.paths = AutoPath(self.family, hparams.path, AUTO_POLICY)
        self._task_grad = grad_and_value(self.inner.loss, has_aux=True)

    # --- meta-training -------------------------------------------------------------------------

    def inner_order(self, batch: EpisodeBatch) -> torch.Tensor:
        """Indices ``[T, inner_steps, B]`` into each task's ``support ++ query`` examples: the
        minibatch of every inner step (shuffled passes over the task, from the global generator)."""
        tasks, n = batch.tasks, batch.support_x.shape[1] + batch.query_x.shape[1]
        size = min(self.hparams.inner_batch, n)
        needed = self.hparams.inner_steps * size
        passes = math.ceil(needed / n)
        order = torch.rand(tasks, passes, n).argsort(-1).flatten(1)[:, :needed]
        return order.view(tasks, self.hparams.inner_steps, size).to(batch.support_x.device)

    def adapted(self, path: str, batch: EpisodeBatch, order: torch.Tensor) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's ``φ_t`` (a leading task axis) after its inner steps on the minibatches ``order``,
        and each task's last inner minibatch loss and accuracy."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        rows = torch.arange(batch.tasks, device=order.device)[:, None, None]
        return self._adapt_tasks(path, x[rows, order], y[rows, order])

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.check_ways(batch.ways)
        order = self.inner_order(batch)
        path = self.paths.path(self.device, lambda path: self.adapted(path, batch, order))
        phi, losses, accuracies = self.adapted(path, batch, order)
        for name, param in self.net.named_parameters():
            param.grad = param.detach() - phi[name].mean(0)  # θ - ε·(θ - mean φ) = θ + ε·(mean φ - θ)
        self.optimizer.step()
        return {"loss": losses.mean().item(), "accuracy": accuracies.mean().item()}

    def _adapt_tasks(self, path: str, xs: torch.Tensor, ys: torch.Tensor) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """``xs [T, steps, B, C, H, W]``, ``ys [T, steps, B]``: the adaptation of every task from ``θ``."""
        params = {k: p.detach() for k, p in self.net.named_parameters()}
        if path == "vmap":
            return vmap(self._adapt_task, in_dims=(None, 0, 0))(params, xs, ys)
        if path != "loop":
            raise ValueError(f"unknown reptile path {path!r}; choose from: {', '.join(PATHS)}")
        outputs = [self._adapt_task(params, x, y) for x, y in zip(xs, ys, strict=True)]
        phi = {k: torch.stack([o[0][k] for o in outputs]) for k in params}
        return phi, torch.stack([o[1] for o in outputs]), torch.stack([o[2] for o in outputs])

    def _adapt_task(
        self, params: Params, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """One task: a step of the inner optimizer on each minibatch ``xs[s], ys[s]`` in turn."""
        adam = self.hparams.inner_optimizer == "adam"
        if adam:
            m = {k: torch.zeros_like(p) for k, p in params.items()}
            v = {k: torch.zeros_like(p) for k, p in params.items()}
        for s in range(xs.shape[0]):
            g, (loss, logits) = self._task_grad(params, xs[s], ys[s])
            if adam:
                params, m, v = self._adam(params, g, m, v, s + 1)
            else:
                params = self.inner.step(params, g)
        accuracy = (logits.argmax(-1) == ys[-1]).float().mean()
        return params, loss, accuracy

    def _adam(self, params: Params, g: Params, m: Params, v: Params, t: int) -> tuple[Params, Params, Params]:
        b1, b2 = ADAM_BETAS
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in params}
        v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in params}
        c1, c2 = 1 - b1**t, 1 - b2**t
        lr = self.hparams.inner_lr
        params = {k: p - lr * (m[k] / c1) / ((v[k] / c2).sqrt() + ADAM_EPS) for k, p in params.items()}
        return params, m, v

    # --- meta-testing --------------------------------------------------------------------------

    def predict_path(self) -> str:
        """The path ``predict`` uses: fixed per learner, so predictions do not depend on timings."""
        if self.hparams.path != "auto":
            return self.hparams.path
        return "vmap" if self.device.type == "cuda" else "loop"

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Fine-tune on each task's whole support set for ``test_inner_steps`` steps, then score its
        queries (non-transductively unless ``transductive``). Logits without a graph."""
        self.check_ways(episode_ways(support_y))
        steps = self.hparams.test_inner_steps
        with torch.no_grad():
            xs = support_x[:, None].expand(-1, steps, *support_x.shape[1:])
            ys = support_y[:, None].expand(-1, steps, -1)
            phi = self._adapt_tasks(self.predict_path(), xs, ys)[0]
            return torch.stack(
                [self._score({k: p[t] for k, p in phi.items()}, support_x[t], query_x[t]) for t in range(len(query_x))]
            )

    def _score(self, params: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        if self.hparams.transductive:
            return functional_call(self.net, params, (query_x,))
        # Batch-norm statistics from the support set plus one query image, for each query image.
        one = lambda q: functional_call(self.net, params, (torch.cat([support_x, q[None]]),))[-1]  # noqa: E731
        return vmap(one)(query_x)
