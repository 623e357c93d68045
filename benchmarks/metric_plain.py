"""Plain PyTorch loops of the metric families' math: the baseline their batched steps are measured against.

What one writes without thinking about speed, as the papers' reference code does: one task at a
time, its support and query images through the embedding, distances from broadcast differences
(``(q[:, None] - p[None]) ** 2``, ``|a - b|`` pairs), the relation module on the literal
concatenation of every (class, query) pair, then the mean of the tasks' losses, one backward and
one Adam step. It runs on :func:`plain_learner`'s copy of a learner: the same weights, in the
textbook layout (contiguous weights, ReLU before max-pool).

With one task per batch a loop computes the same loss and gradients as the learner's step (the
tests check it); with more tasks they differ only where batch-norm in training mode normalises
with each task's statistics here and with the whole meta-batch's there. Support labels are
assumed class-ordered (the sampler's order), as in the papers' code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.base import Learner
from learners.matching import Matching
from learners.protonet import ProtoNet
from learners.relation import Relation
from learners.siamese import Siamese
from tasks.episodes import EpisodeBatch

ModuleT = TypeVar("ModuleT", bound=nn.Module)
TaskLoss = Callable[[Learner, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def protonet_task(
    learner: ProtoNet, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, ways: int
) -> torch.Tensor:
    z = learner.encoder(torch.cat([sx, qx]))
    support, query = z[: len(sx)], z[len(sx) :]
    prototypes = support.reshape(ways, -1, support.shape[-1]).mean(1)
    if learner.hparams.distance == "cosine":
        logits = learner.scale * F.cosine_similarity(query[:, None], prototypes[None], dim=-1, eps=1e-12)
    else:
        logits = -((query[:, None] - prototypes[None]) ** 2).sum(-1)
    return F.cross_entropy(logits, qy)


def matching_task(
    learner: Matching, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, ways: int
) -> torch.Tensor:
    z = learner.encoder(torch.cat([sx, qx]))
    support, query = z[: len(sx)], z[len(sx) :]
    if learner.support_context is not None and learner.query_context is not None:  # fce
        support = learner.support_context(support[None])[0]
        query = learner.query_context(query[None], support[None])[0]
    cosine = F.cosine_similarity(query[:, None], support[None], dim=-1, eps=1e-12)
    probabilities = torch.softmax(cosine, dim=-1) @ F.one_hot(sy, ways).to(cosine.dtype)
    return F.nll_loss(probabilities.log(), qy)


def relation_task(
    learner: Relation, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, ways: int
) -> torch.Tensor:
    z = learner.encoder(torch.cat([sx, qx]))
    support, query = z[: len(sx)], z[len(sx) :]
    classes = support.reshape(ways, -1, *support.shape[1:]).sum(1)
    logits = learner.relation.concatenated(classes[None], query[None])[0]
    return F.mse_loss(torch.sigmoid(logits), F.one_hot(qy, ways).to(logits.dtype))


def siamese_task(
    learner: Siamese, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, ways: int
) -> torch.Tensor:
    z = learner.twin(torch.cat([sx, qx]))
    labels = torch.cat([sy, qy])
    logits = learner.head(z[:, None], z[None])  # weighted L1 of every [M, M] difference
    same = labels[:, None] == labels[None]
    distinct = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & distinct, ~same
    bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return 0.5 * (bce[positive].mean() + bce[negative].mean())


TASK_LOSSES: dict[str, TaskLoss] = {
    "protonet": protonet_task,  # type: ignore[dict-item]
    "matching": matching_task,  # type: ignore[dict-item]
    "relation": relation_task,  # type: ignore[dict-item]
    "siamese": siamese_task,  # type: ignore[dict-item]
}
PLAIN_FAMILIES: tuple[str, ...] = tuple(TASK_LOSSES)


def plain_learner(learner: ModuleT) -> ModuleT:
    """A copy of ``learner`` (weights and, for a learner, its optimizer) laid out as the papers' code is: contiguous
    (NCHW) convolution weights and every ``MaxPool2d, ReLU`` pair back in the order ``ReLU, MaxPool2d``."""
    plain = copy.deepcopy(learner)
    plain.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # missing from torch's stub
    for sequence in plain.modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        names = list(sequence._modules)
        for first, second in zip(names, names[1:], strict=False):
            pool, relu = sequence._modules[first], sequence._modules[second]
            if isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU):
                sequence._modules[first], sequence._modules[second] = relu, pool
    return plain


def plain_loss(learner: Learner, batch: EpisodeBatch) -> torch.Tensor:
    """The mean over tasks of each task's loss, computed one task at a time."""
    task_loss = TASK_LOSSES[learner.family]
    tasks = zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y, strict=True)
    return torch.stack([task_loss(learner, sx, sy, qx, qy, batch.ways) for sx, sy, qx, qy in tasks]).mean()


def plain_step(learner: Learner, batch: EpisodeBatch) -> float:
    """One meta-update the plain way: the loop's loss, one backward, one step of the learner's Adam."""
    optimizer = learner.optimizer
    learner.train()
    loss = plain_loss(learner, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
