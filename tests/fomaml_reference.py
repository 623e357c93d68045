"""An independent first-order MAML, written the way the older libraries do it (learn2learn, Finn's code).

It shares nothing with ``learners/``: its own Conv-4 (``reference_network``), plain modules and
optimisers. Per task it deep-copies the module, takes ``inner_steps`` steps of ``torch.optim.SGD``
on the support loss, back-propagates the query loss through the copy, and adds the copy's
gradients (divided by the number of tasks) onto the initial weights' ``.grad``; then one Adam step.
That is the definition of first-order MAML (Finn et al. 2017, section 5.2): the meta-gradient is
the query-loss gradient at the adapted weights, ``∂θ_K/∂θ`` taken as the identity.

``copy_weights`` loads another network's weights into the reference by position (shapes checked),
so both start from the same initial weights without sharing any code.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def reference_network(
    image_shape: tuple[int, int, int], width: int, depth: int, ways: int, features: str = "mean"
) -> nn.Sequential:
    """Finn's Omniglot Conv-4 (cbfinn/maml): ``depth`` x (3x3 stride-2 convolution, batch-norm on batch
    statistics, ReLU), the last feature map averaged over its positions (``features="flatten"``: flattened
    instead), then a linear head. No convolution bias: batch-norm's shift makes it redundant."""
    channels, height, wide = image_shape
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [
            nn.Conv2d(channels if index == 0 else width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width, track_running_stats=False),
            nn.ReLU(),
        ]
        height, wide = (height + 1) // 2, (wide + 1) // 2
    if features == "mean":
        layers.append(nn.AdaptiveAvgPool2d(1))
    embedding = width if features == "mean" else width * height * wide
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(embedding, ways))


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """``target``'s parameters := ``source``'s, matched by position; a clear error if the shapes differ."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    for index, (a, b) in enumerate(pairs):
        if a.shape != b.shape:
            raise ValueError(f"parameter {index}: source {tuple(a.shape)} != reference {tuple(b.shape)}")
    with torch.no_grad():
        for a, b in pairs:
            b.copy_(a)


class ReferenceFOMAML:
    """First-order MAML on a cloned module per task; Adam (``meta_lr``) on the initial weights."""

    def __init__(self, net: nn.Module, inner_lr: float, inner_steps: int, meta_lr: float) -> None:
        self.net = net
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.optimizer = torch.optim.Adam(net.parameters(), lr=meta_lr)

    def meta_gradient(self, support_x, support_y, query_x, query_y) -> tuple[list[torch.Tensor], float]:
        """The mean first-order meta-gradient (left in ``.grad`` and returned) and the mean query accuracy."""
        self.optimizer.zero_grad(set_to_none=True)
        tasks, correct = len(support_x), 0.0
        for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y, strict=True):
            learner = copy.deepcopy(self.net)
            inner = torch.optim.SGD(learner.parameters(), lr=self.inner_lr)
            for _ in range(self.inner_steps):
                inner.zero_grad()
                F.cross_entropy(learner(sx), sy).backward()
                inner.step()
            inner.zero_grad()
            logits = learner(qx)
            F.cross_entropy(logits, qy).backward()
            correct += (logits.argmax(-1) == qy).float().mean().item()
            for p, adapted in zip(self.net.parameters(), learner.parameters(), strict=True):
                assert adapted.grad is not None  # the query loss reaches every weight
                share = adapted.grad / tasks
                p.grad = share if p.grad is None else p.grad + share
        return [p.grad for p in self.net.parameters() if p.grad is not None], correct / tasks

    def meta_train_step(self, support_x, support_y, query_x, query_y) -> float:
        """One meta-update; returns the query accuracy of the adapted weights (before the update)."""
        _, accuracy = self.meta_gradient(support_x, support_y, query_x, query_y)
        self.optimizer.step()
        return accuracy
