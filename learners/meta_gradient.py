"""MAML's meta-gradient (Finn et al. 2017) on a meta-batch, by several exactly equal formulations.

Each task adapts the meta-parameters ``θ`` with ``K`` SGD steps on its support loss,
``θ_k+1 = θ_k - lr ∇L_s(θ_k)``, and is scored on its query set with ``θ_K``. The meta-gradient
is the gradient of the mean query loss with respect to ``θ``: second order, through the inner
loop, or first order, taking ``∂θ_K/∂θ`` as the identity (the query gradient at ``θ_K``). The
formulations differ only in how the work is laid out, which decides the speed:

``loop``
    Task by task: ``torch.func.grad`` of the task's query loss through its inner loop.
``vmap``
    The same per-task function ``vmap``-ed over the task axis: one call; per-task weights
    become grouped convolutions, which run at about half the task loop's speed on a 2-core CPU
    (meant for GPUs, where one launch for all tasks should beat many small ones).
``split``
    The chain rule split at the adapted weights. (1) The inner loop runs ``vmap``-ed over tasks
    with no graph kept; its first step uses the shared ``θ``, so all tasks' support images go
    through each convolution as one batch. (2) ``v_t = ∇L_q(θ_K,t)``, the query loss and its
    gradient, per task as a plain first-order function (on a CPU one task's activations stay in
    cache). (3) Second order: back through the inner loop with Hessian-vector products of the
    support loss, ``u <- u - lr H_s(θ_k) u`` for ``k = K-1 .. 0`` (forward-over-reverse, all
    tasks in one ``vmap``), giving ``Σ_t (∂θ_K,t/∂θ)ᵀ v_t`` exactly. Nothing here needs a
    double backward, so every stage can be compiled:
``split-compiled``
    ``split`` with its stages compiled by ``torch.compile``: the inner loop, the Hessian-vector
    products, and the query loss, whose backward AOTAutograd compiles too (the query gradient is
    taken with plain autograd, faster here than ``torch.func.grad``).
``split-vmap``
    ``split`` with the query stage ``vmap``-ed over tasks instead of looped (for GPUs).

Every transform here keeps ``vmap`` outermost. Reverse-mode differentiation *through* a
``vmap``-ed transform of a network with batch-norm (``torch.autograd``, ``torch.func.vjp`` or
``grad`` over ``vmap(grad(f))`` or ``vmap(jvp(f))``, shared weights, per-task inputs) gives a
wrong gradient for the weights feeding an affine batch-norm in PyTorch 2.13 (0.4-65% off in
float64, depending on the network; apparently the batch-norm batching rules, cf.
pytorch/functorch#534). No path is written that way: the naive "``vmap`` the inner loop, then
``.backward()``" MAML computes a wrong meta-gradient.

The inner learning rate is a scalar (MAML) or a per-parameter tensor dict ``α`` shaped like the
parameters (Meta-SGD, Li et al. 2017): a step is ``θ_k+1 = θ_k - α ⊙ ∇L_s(θ_k)``. With ``α`` every
path also returns ``∂L_q/∂α`` (``MetaStep.lr_grads``): the loop and vmap paths differentiate with
respect to ``(θ, α)`` together; the split paths accumulate ``-Σ_k u_k+1 ⊙ ∇L_s(θ_k)`` on the way
back, where ``u_k+1`` is the adjoint at ``θ_k+1`` and the Hessian-vector product is taken with
``α ⊙ u_k+1`` (``∂θ_k+1/∂θ_k = I - diag(α) H``, and ``H`` is symmetric).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

Params = dict[str, torch.Tensor]
InnerLR = float | Mapping[str, torch.Tensor]  # a scalar, or a tensor per parameter (Meta-SGD's α)
Stage = Callable[..., Any]  # torch.func transforms: each stage returns its own tree of tensors
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> (loss, logits)

PATHS: tuple[str, ...] = ("loop", "vmap", "split", "split-vmap", "split-compiled")


@dataclass(frozen=True)
class MetaStep:
    """The mean meta-gradient of a meta-batch, and each task's query loss ``[T]`` and logits ``[T, NQ, ways]``;
    ``lr_grads``: the mean gradient with respect to a per-parameter inner learning rate, when there is one."""

    grads: Params
    losses: torch.Tensor
    logits: torch.Tensor
    lr_grads: Params | None = None


class MetaGradient:
    """MAML's inner loop and meta-gradient for the network ``net``, called through its parameters.

    ``inner_lr`` is a float, or a mapping from parameter name to a tensor of that parameter's shape
    (held by reference: a learner may update the tensors in place, e.g. with its optimizer).
    """

    def __init__(self, net: nn.Module, inner_lr: InnerLR, inner_steps: int, first_order: bool) -> None:
        self.net = net
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.learned_lr = isinstance(inner_lr, Mapping)
        task_meta_grad = grad_and_value(self._task_loss, argnums=(0, 1) if self.learned_lr else 0, has_aux=True)
        self._stages: dict[str, Stage] = {
            "task": task_meta_grad,
            "tasks": vmap(task_meta_grad, in_dims=(None, None, 0, 0, 0, 0)),
            "trajectory": vmap(self._trajectory, in_dims=(None, None, 0, 0)),
            "query": partial(self._query, self.loss),
            "query-tasks": vmap(grad_and_value(self.loss, has_aux=True)),
            "hvp-shared": vmap(self._hvp, in_dims=(None, 0, 0, 0)),
            "hvp-tasks": vmap(self._hvp),
        }
        self._compiled: dict[str, Stage] = {}

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's cross-entropy and logits under ``params``."""
        logits = functional_call(self.net, params, (x,))
        return F.cross_entropy(logits, y), logits

    def current_lr(self) -> InnerLR:
        """The inner learning rate as it is now, detached (a float stays a float)."""
        return (
            {k: a.detach() for k, a in self.inner_lr.items()} if isinstance(self.inner_lr, Mapping) else self.inner_lr
        )

    def step(self, params: Params, g: Params, lr: InnerLR | None = None) -> Params:
        """One SGD step ``θ - lr ⊙ g`` with a scalar or per-parameter ``lr`` (default: this inner rate)."""
        lr = self.inner_lr if lr is None else lr
        if isinstance(lr, Mapping):
            return {k: p - lr[k] * g[k] for k, p in params.items()}
        return {k: p - lr * g[k] for k, p in params.items()}

    def adapt(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        second_order: bool,
        lr: InnerLR | None = None,
    ) -> Params:
        """One task's weights after ``steps`` SGD steps on its support set ``(x, y)``.

        With ``second_order`` the result stays differentiable through the steps (under an
        enclosing ``torch.func.grad``); otherwise each step's gradient is a constant (a
        per-parameter ``lr`` stays differentiable either way). ``torch.func.grad`` computes
        gradients even under ``torch.no_grad``. ``lr`` defaults to this inner rate, detached.
        """
        lr = self.current_lr() if lr is None else lr
        support_grad = grad(lambda p: self.loss(p, x, y)[0])
        for _ in range(steps):
            g = support_grad(params)
            params = self.step(params, g if second_order else {k: v.detach() for k, v in g.items()}, lr)
        return params

    def adapt_tasks(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        """First-order :meth:`adapt` of every task of ``x [T, N*K, ...]``: weights with a leading task axis."""
        lr = self.current_lr()
        return vmap(lambda p, xt, yt: self.adapt(p, xt, yt, steps, False, lr), in_dims=(None, 0, 0))(params, x, y)

    def __call__(
        self, path: str, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> MetaStep:
        """The meta-gradient of ``params`` on one meta-batch, by ``path``; ``params`` are not modified."""
        params = {k: p.detach() for k, p in params.items()}
        lr = self.current_lr()
        if path == "loop":
            task = self._stages["task"]
            grads, (losses, logits) = _stack([task(params, lr, *t) for t in zip(sx, sy, qx, qy, strict=True)])
        elif path == "vmap":
            grads, (losses, logits) = self._stages["tasks"](params, lr, sx, sy, qx, qy)
        elif path in ("split", "split-vmap", "split-compiled"):
            return self._split(path, params, lr, sx, sy, qx, qy)
        else:
            raise ValueError(f"unknown MAML path {path!r}; choose from: {', '.join(PATHS)}")
        grads, lr_grads = grads if self.learned_lr else (grads, None)
        mean = lambda g: {k: v.mean(0) for k, v in g.items()}  # noqa: E731
        return MetaStep(mean(grads), losses, logits, None if lr_grads is None else mean(lr_grads))

    def _task_loss(self, params: Params, lr: InnerLR, sx, sy, qx, qy) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(self.adapt(params, sx, sy, self.inner_steps, not self.first_order, lr), qx, qy)

    def _trajectory(
        self, params: Params, lr: InnerLR, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[Params], list[Params]]:
        """One task's weights after each inner step, ``[θ_1, ..., θ_K]``, with no graph, and (with a
        per-parameter ``lr`` only, else ``[]``) the support gradients ``[∇L_s(θ_0), ..., ∇L_s(θ_K-1)]``."""
        support_grad = grad(lambda p: self.loss(p, x, y)[0])
        weights, grads = [], []
        for _ in range(self.inner_steps):
            g = support_grad(params)
            params = self.step(params, g, lr)
            weights.append(params)
            if self.learned_lr:
                grads.append(g)
        return weights, grads

    def _hvp(self, params: Params, tangent: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        """Hessian of one task's support loss at ``params`` times ``tangent`` (forward-over-reverse)."""

        def support_loss(p: Params) -> torch.Tensor:
            return self.loss(p, x, y)[0]

        return jvp(grad(support_loss), (params,), (tangent,))[1]

    def _split(self, path: str, params: Params, lr: InnerLR, sx, sy, qx, qy) -> MetaStep:
        stage: Callable[[str], Stage] = self._compiled_stage if path == "split-compiled" else self._stages.__getitem__
        trajectory, support_grads = stage("trajectory")(params, lr, sx, sy)
        weights = [params, *trajectory]
        if path == "split-vmap":
            v, (losses, logits) = stage("query-tasks")(weights[-1], qx, qy)
        else:
            query = stage("query")
            v, (losses, logits) = _stack(
                [query({k: p[t] for k, p in weights[-1].items()}, qx[t], qy[t]) for t in range(len(qx))]
            )
        lr_grads: Params | None = None
        if isinstance(lr, Mapping):  # ∂L_q/∂α = -Σ_k u_k+1 ⊙ ∇L_s(θ_k), summed over tasks here, averaged below
            lr_grads = {name: torch.zeros_like(a) for name, a in lr.items()}
        for k in reversed(range(self.inner_steps)):
            if lr_grads is not None:
                lr_grads = {name: lr_grads[name] - (u * support_grads[k][name]).sum(0) for name, u in v.items()}
            if self.first_order:
                continue  # ∂θ_K/∂θ taken as the identity: the adjoint stays the query gradient
            hvp = stage("hvp-shared" if k == 0 else "hvp-tasks")
            if isinstance(lr, Mapping):
                hv = hvp(weights[k], {name: lr[name] * u for name, u in v.items()}, sx, sy)
                v = {name: u - hv[name] for name, u in v.items()}
            else:
                hv = hvp(weights[k], v, sx, sy)
                v = {name: u - lr * hv[name] for name, u in v.items()}
        tasks = len(qx)
        return MetaStep(
            {k: g.mean(0) for k, g in v.items()},
            losses,
            logits,
            None if lr_grads is None else {k: g / tasks for k, g in lr_grads.items()},
        )

    def _query(self, loss: LossFn, params: Params, x, y) -> tuple[Params, tuple[torch.Tensor, torch.Tensor]]:
        """One task's query gradient, loss and logits at ``params`` (first order) with plain autograd:
        faster here than ``torch.func.grad``, and ``torch.compile`` then compiles the forward and,
        through AOTAutograd, the backward of ``loss``."""
        leaves = {k: p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad():
            value, logits = loss(leaves, x, y)
            grads = torch.autograd.grad(value, list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), (value.detach(), logits.detach())

    def _compiled_stage(self, name: str) -> Stage:
        if name not in self._compiled:
            if name == "query":  # compile the loss; the autograd call stays outside the compiled region
                self._compiled[name] = partial(self._query, torch.compile(self.loss, dynamic=False))
            else:
                self._compiled[name] = torch.compile(self._stages[name], dynamic=False)
        return self._compiled[name]


def _stack(
    outputs: list[tuple[Any, tuple[torch.Tensor, torch.Tensor]]],
) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    """Stack per-task results; the gradients are a dict, or a tuple of dicts (``(θ, α)``)."""
    first = outputs[0][0]
    stacked = (torch.stack([loss for _, (loss, _) in outputs]), torch.stack([lg for _, (_, lg) in outputs]))
    if isinstance(first, tuple):
        return tuple(
            {k: torch.stack([g[i][k] for g, _ in outputs]) for k in first[i]} for i in range(len(first))
        ), stacked
    return {k: torch.stack([g[k] for g, _ in outputs]) for k in first}, stacked
