"""Meta-learner LSTM (Ravi & Larochelle 2017, Optimization as a Model for Few-Shot Learning).

A learner network (the backbone, Conv-4 by default, plus a ``ways``-way linear head) is trained on
each task's support set by a coordinate-wise LSTM instead of by SGD. The LSTM's cell state *is* the learner's flattened
parameter vector ``θ``:

    c_t = f_t ⊙ c_t-1 - i_t ⊙ ∇_t,        θ_t = c_t,        c_0 = the learned initial parameters,

with ``∇_t = ∇L(θ_t-1)`` and ``L_t`` the learner's support loss and gradient, a learned input gate
``i_t = σ(W_I [h_t, θ_t-1, i_t-1] + b_I)`` (a learned, per-coordinate, per-step learning rate) and
a learned forget gate ``f_t = σ(W_F [h_t, θ_t-1, f_t-1] + b_F)`` (learned shrinkage). ``h_t`` is the
hidden state of the first of the two LSTM layers, a standard LSTM cell that reads, per coordinate,
the preprocessed gradient and loss (Andrychowicz et al. 2016, ``p = 10``: ``(log|x|/p, sign x)`` if
``|x| >= e^-p``, else ``(-1, e^p x)``). Every coordinate shares the LSTM's weights. The meta-loss is
the query loss of ``θ_T``; Adam (``meta_lr``, the paper: 1e-3) updates the LSTM weights and ``c_0``
with the gradient norm clipped (``grad_clip``, the paper: 0.25).

Choices made:

- First order in the learner's gradient, as the paper assumes: ``∇_t`` and ``L_t`` are computed at
  a detached ``θ_t-1`` and enter as constants, so no second derivatives are taken; the meta-gradient
  still flows through ``c_t-1`` and the gates.
- ``c_0`` is the learner network's own parameters (``self.net``): the module serves both as the
  initial point and, through ``torch.func.functional_call`` with the flat cell state unflattened
  into its parameter shapes, as the function every ``θ_t`` is evaluated with.
- Batch-norm, as in the paper, normalises with the statistics of the batch it sees at meta-training
  and at meta-test time and keeps no running averages across tasks (Conv-4 with
  ``running_stats=False``): predictions are transductive within a task's query set. The batch-norm
  scale and shift are learner parameters and so part of the cell state.
- ``backbone`` is not searched: the cell state holds every learner parameter per task and the LSTM
  runs over all of them, so its memory grows with the backbone's size times tasks times ``hidden``
  (the paper's 32-filter Conv-4: ~0.1M parameters; ResNet-12 at width 64: 12.4M, some GB per step).
  ``backbone: resnet12`` may be set, at a small ``width`` (8: ~0.2M parameters); no DropBlock.
- Each inner step uses the whole support set (1-shot episodes have no smaller batch). Training and
  ``predict`` take the same ``inner_steps`` updates: the LSTM is trained for that horizon.
- Initialisation: forget-gate bias uniform in [4, 6] (``f ≈ 1``, keep the parameters) and input-gate
  bias in [-5, -4] (small steps), gate weights uniform in [-0.01, 0.01], as the paper prescribes
  (large forget bias, small input bias).
- Vectorised over tasks: the meta-learner runs on all ``tasks x parameters`` coordinates at once;
  the learner's support gradients are either ``vmap``-ed over tasks or looped (``path``; ``"auto"``
  times both on the first meta-batch on a GPU, and takes ``vmap`` untimed on a CPU, so that a CPU
  run repeats to the last digit). Query losses are looped over tasks (plain autograd through
  them, never through a ``vmap``-ed batch-norm).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from learners.auto_path import AutoPath, AutoPolicy
from learners.backbones import adaptable_classifier
from learners.backbones.conv4 import DOWNSAMPLES, Downsample
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.gradient_encoding import preprocess_gradients
from learners.hparam_checks import at_least, no_dropblock, one_of, path_or_auto, positive
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch

PATHS: tuple[str, ...] = ("loop", "vmap")
# "auto": on a CPU the first of (vmap, loop) that runs, untimed; on a GPU the faster (median of 2 timed runs)
AUTO_POLICY = AutoPolicy(untimed=("vmap", "loop"), timed=PATHS, timed_runs=2, statistic=statistics.median)


@dataclass(frozen=True)
class MetaLSTMHyperparams(BackboneHyperparams):
    width: int = 32  # the paper's learner: 4 blocks of 32 filters
    meta_lr: float = 1e-3
    inner_steps: int = 5
    hidden: int = 20  # the first LSTM layer's size, as in the paper
    grad_clip: float = 0.25  # max meta-gradient norm (<= 0: no clipping)
    downsample: Downsample = "pool"
    path: str = "auto"

    def validate(self) -> None:
        super().validate()
        positive("meta_lr", self.meta_lr)
        at_least("inner_steps", self.inner_steps, 1)
        at_least("hidden", self.hidden, 1)
        one_of("downsample", self.downsample, DOWNSAMPLES)
        path_or_auto("path", self.path, PATHS)
        no_dropblock("dropblock", self.dropblock)


class MetaLearnerLSTM(nn.Module):
    """The two-layer coordinate-wise meta-learner; every tensor argument is ``[coordinates]``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, hidden)  # input: preprocessed gradient (2) and loss (2)
        self.forget = nn.Linear(hidden + 2, 1)  # reads [h, θ_t-1, f_t-1]
        self.input = nn.Linear(hidden + 2, 1)  # reads [h, θ_t-1, i_t-1]
        for gate, low, high in ((self.forget, 4.0, 6.0), (self.input, -5.0, -4.0)):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.uniform_(gate.bias, low, high)

    def forward(self, grad, loss, c, f, i, state):
        """One update: returns ``c_t, f_t, i_t`` and the first layer's new ``(h, cell)``."""
        h, cell = self.lstm(torch.cat([preprocess_gradients(grad), preprocess_gradients(loss)], dim=-1), state)
        f = torch.sigmoid(self.forget(torch.cat([h, c[:, None], f[:, None]], dim=-1))).squeeze(-1)
        i = torch.sigmoid(self.input(torch.cat([h, c[:, None], i[:, None]], dim=-1))).squeeze(-1)
        return f * c - i * grad, f, i, (h, cell)


class MetaLSTM(Learner):
    """Ravi & Larochelle's LSTM meta-learner training a Conv-4 learner (``self.net``, also ``c_0``)."""

    family: ClassVar[str] = "meta_lstm"
    paper: ClassVar[str] = "Ravi & Larochelle 2017, Optimization as a Model for Few-Shot Learning (ICLR)"
    fixed_ways: ClassVar[bool] = True
    Hyperparams = MetaLSTMHyperparams

    search_space = {
        "meta_lr": Float(1e-4, 1e-2, log=True),
        "inner_steps": Int(2, 12),
        "hidden": Choice((10, 20, 40)),
        "grad_clip": Float(0.1, 10.0, log=True),
        "width": Choice((16, 32, 64)),
        "depth": Int(2, 4),
    }

    def __init__(self, hparams: MetaLSTMHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.net = adaptable_classifier(hparams, image_shape, ways, downsample=hparams.downsample)
        self.meta_learner = MetaLearnerLSTM(hparams.hidden)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams.meta_lr)
        self.paths = AutoPath(self.family, hparams.path, AUTO_POLICY)
        self._shapes = {name: p.shape for name, p in self.net.named_parameters()}
        self._task_grad = grad_and_value(self._loss)

    # --- flat parameters <-> the learner's parameter dict ----------------------------------------

    def initial(self) -> torch.Tensor:
        """``c_0``: the learner's parameters as one flat vector (differentiable)."""
        return torch.cat([p.reshape(-1) for p in self.net.parameters()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., P] -> {name: [..., *shape]}`` (views), in ``net.named_parameters()`` order."""
        out, start = {}, 0
        for name, shape in self._shapes.items():
            size = shape.numel()
            out[name] = flat[..., start : start + size].reshape(*flat.shape[:-1], *shape)
            start += size
        return out

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.net, params, (x,)), y)

    def support_gradients(
        self, path: str, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The learner's support gradient ``[T, P]`` and loss ``[T]`` at the (detached) ``flat [T, P]``."""
        flat = flat.detach()
        if path == "vmap":
            grads, losses = vmap(self._task_grad)(self.unflatten(flat), x, y)
        elif path == "loop":
            outputs = [self._task_grad(self.unflatten(flat[t]), x[t], y[t]) for t in range(len(x))]
            grads = {k: torch.stack([g[k] for g, _ in outputs]) for k in self._shapes}
            losses = torch.stack([loss for _, loss in outputs])
        else:
            raise ValueError(f"unknown meta_lstm path {path!r}; choose from: {', '.join(PATHS)}")
        return torch.cat([grads[k].flatten(1) for k in self._shapes], dim=1), losses

    # --- the inner loop -------------------------------------------------------------------------

    def adapt(self, path: str, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """Each task's learner parameters ``θ_T = c_T`` ``[T, P]`` after ``inner_steps`` LSTM updates
        (differentiable with respect to the meta-parameters when autograd is on)."""
        tasks = len(support_x)
        c0 = self.initial()
        c = c0.expand(tasks, -1).reshape(-1)  # [T*P]: every task's coordinates, one batch
        f = torch.zeros_like(c)
        i = torch.zeros_like(c)
        state = None
        for _ in range(self.hparams.inner_steps):
            grads, losses = self.support_gradients(path, c.view(tasks, -1), support_x, support_y)
            loss = losses[:, None].expand(-1, c0.numel()).reshape(-1)
            c, f, i, state = self.meta_learner(grads.reshape(-1), loss, c, f, i, state)
        return c.view(tasks, -1)

    def query_logits(self, flat: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, NQ, ways]`` of each task's queries under its parameters ``flat [T, P]``."""
        return torch.stack(
            [functional_call(self.net, self.unflatten(flat[t]), (query_x[t],)) for t in range(len(query_x))]
        )

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.check_ways(batch.ways)
        path = self.paths.path(self.device, lambda path: self._first_support_gradients(path, batch))
        logits = self.query_logits(self.adapt(path, batch.support_x, batch.support_y), batch.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())  # equal-size tasks: the mean task loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.hparams.grad_clip)
        self.optimizer.step()
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    def _first_support_gradients(self, path: str, batch: EpisodeBatch) -> object:
        """What ``"auto"`` compares the layouts on: the support gradients at ``c_0`` of every task."""
        flat = self.initial().detach().expand(batch.tasks, -1)
        return self.support_gradients(path, flat, batch.support_x, batch.support_y)

    def predict_path(self) -> str:
        """The path ``predict`` uses: fixed per learner, so predictions do not depend on timings."""
        if self.hparams.path != "auto":
            return self.hparams.path
        return "vmap" if self.device.type == "cuda" else "loop"

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Train the learner on each support set with the LSTM, then score the queries (no graph)."""
        self.check_ways(episode_ways(support_y))
        with torch.no_grad():
            return self.query_logits(self.adapt(self.predict_path(), support_x, support_y), query_x)
