"""Shared machinery of the metric-based families (Siamese, Matching, Relation, ProtoNet-style).

These families have no inner loop: a task is solved by embedding its support and query images
and comparing them. One meta-update is always the same shape,

    embed (support + query) -> query scores and a loss -> backward -> one Adam step,

so :class:`EpisodeLossLearner` owns that step and each family only says how it scores a task
(:meth:`~EpisodeLossLearner.scores`) and, when its loss is not the cross-entropy of those
scores, how it computes the loss (:meth:`~EpisodeLossLearner.episode_loss`).

Choices made:

- ``predict`` runs without autograd and with the module in eval mode for the duration (the
  previous mode is restored): batch-norm then uses its running statistics, so a query's logits
  depend neither on the other tasks evaluated in the same batch nor on the other query images
  of its task, and evaluating never changes the running statistics. Callers (the evaluator, the
  served model) need not remember ``eval()``/``no_grad``.
- Everything is vectorised over the task axis: the images of all tasks go through the
  embedding network as one batch, comparisons are batched matrix products.
- Convolution weights are channels-last (:func:`channels_last`), and the images of all tasks go
  through the embedding in one call: the two choices that made these steps fastest on a CPU.
- Class membership enters through one-hot support labels (:func:`one_hot_support`), so the
  support set may come in any order and with unequal shots per class (the served model's
  requests), not only the sampler's class-by-class order.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from learners.base import Learner, episode_ways
from tasks.episodes import EpisodeBatch

EVAL_EMBED_CHUNK = 2048  # images per embedding call in predict (bounds memory, not results)


class EpisodeLossLearner(Learner):
    """A learner meta-trained by one differentiable loss per batch of episodes and Adam.

    Subclasses build their modules in ``__init__`` and then call :meth:`make_optimizer`; they
    implement :meth:`scores` (the logits :meth:`predict` returns) and override
    :meth:`episode_loss` when their training loss is not the cross-entropy of those logits.
    The learning rate is read from ``hparams.lr``. A ProtoNet-style learner fits as is:
    ``scores`` = negative squared distances to the class means, default loss (a learning-rate
    schedule would step after ``super().meta_train_step``).
    """

    def make_optimizer(self) -> None:
        """Adam over every parameter, at ``hparams.lr`` (call once the modules exist)."""
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @abc.abstractmethod
    def scores(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits ``[T, NQ, ways]`` for the queries of each task."""

    def episode_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of ``batch`` and its query logits (for the accuracy).

        Default: cross-entropy of :meth:`scores` against the query labels, averaged over every
        query of every task.
        """
        logits = self.scores(batch.support_x, batch.support_y, batch.query_x)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()), logits

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.train()
        loss, logits = self.episode_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(logits.detach(), batch.query_y)}

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, NQ, ways]`` without a graph, batch-norm on running statistics."""
        with torch.no_grad(), evaluating(self):
            return self.scores(support_x, support_y, query_x)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its previous mode restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``labels`` that are the argmax of ``logits`` (any leading shape)."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def one_hot_support(support_y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One-hot support labels ``[T, S, ways]`` (``ways`` from the labels themselves)."""
    return F.one_hot(support_y, episode_ways(support_y)).to(dtype)


def channels_last(module: nn.Module) -> None:
    """Store ``module``'s convolution weights channels-last (NHWC), so its convolutions, batch-norms
    and pools run on NHWC activations: measured faster on a CPU for every metric family's step
    (docs/metric-speed.md), the same numbers up to float rounding. ``.to(device)`` keeps the layout."""
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a documented keyword torch's stub lacks


def embed_tasks(net: nn.Module, *sets: torch.Tensor) -> list[torch.Tensor]:
    """Run ``net`` once over the images of every set ``[T, n_i, C, H, W]`` of every task.

    One batch for all images (so batch-norm in training mode sees the whole meta-batch, and
    the convolutions run on one large batch); returns each set's outputs ``[T, n_i, ...]``.
    Without autograd and in eval mode (``predict``), where each image's output depends on that
    image alone, the images go through in chunks of ``EVAL_EMBED_CHUNK``: a 50-task 20-way
    5-shot evaluation batch is 20,000 images, whose first Conv-4 activations alone would take
    ~4 GB at width 64.
    """
    images = torch.cat(sets, dim=1) if len(sets) > 1 else sets[0]
    flat = images.flatten(0, 1)
    if torch.is_grad_enabled() or net.training or len(flat) <= EVAL_EMBED_CHUNK:
        out = net(flat)
    else:  # evaluation: per-image results, so chunks bound the activations' memory exactly
        out = torch.cat([net(chunk) for chunk in flat.split(EVAL_EMBED_CHUNK)])
    return list(out.unflatten(0, images.shape[:2]).split([s.shape[1] for s in sets], dim=1))
