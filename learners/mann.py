"""Memory-augmented neural network (Santoro et al. 2016, "One-shot learning with memory-augmented
neural networks", arXiv 1605.06065 / ICML 2016 "Meta-learning with memory-augmented neural networks").

An LSTM controller reads from and writes to an external memory matrix ``M`` (``memory_slots``
rows of ``memory_size``) with Least Recently Used Access (LRUA). At step ``t`` the controller
state ``h_t`` gives, per read head, a key ``k_t`` and a write gate ``alpha_t``, and (paper, 3.2):

- write weights ``w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}``: a
  learned interpolation between the row(s) read at the previous step and a least-used row;
  ``w^lu_{t-1}`` marks the ``n`` least-used rows of the usage ``w^u_{t-1}`` (``n`` = read heads);
- before writing, those least-used rows are zeroed; then ``M_t(i) = M_{t-1}(i) + w^w_t(i) a_t``;
- read weights ``w^r_t = softmax_i(cosine(k_t, M_t(i)))`` and read vector ``r_t = sum_i w^r_t(i) M_t(i)``;
- usage ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t`` (summed over heads);
- output: a linear layer on ``[h_t, r_t]``.

The controller's input at step ``t`` is ``[features(x_t), onehot(y_{t-1}), r_{t-1}]``: a label is
shown one step late (the first step gets a zero label vector), so the network must keep an image
in memory until its label arrives and bind the two there. ``features`` is the flattened pixels,
as in the paper (``encoder="pixels"``, the default; the paper down-sampled Omniglot to 20x20, here
the dataset's own image size is used), or the shared Conv-4 embedding trained end to end
(``encoder="conv"``: the backbone of :mod:`learners.backbones`, Conv-4 or ResNet-12, with its knobs
``backbone``/``width``/``depth``/``dropblock``, which apply to it only: a ``backbone`` other than
``conv4`` with ``encoder="pixels"`` is refused rather than ignored). ``backbone`` is not searched:
MANN learns slowly (100,000 episodes in the paper), the Conv-4 encoder already costs ~5x the pixels'
step on a CPU without a gain in its first 500 steps (below), and ResNet-12 far more.

How an episode maps onto the paper's instance-wise protocol
-----------------------------------------------------------

The paper feeds sequences of images from ``N`` classes in random order, each with the previous
image's label, trains on the prediction at every step and reports the accuracy of the 1st, 2nd,
..., 10th instance of each class. Here a task is presented as follows, in training and in
``predict`` alike:

- its ``N*K`` support images form one sequence in random order (a fresh order per task and
  training step; in ``predict`` one fixed-seed order, the same for every task, so predictions are
  deterministic and do not depend on the batch), each step carrying the previous step's label;
- every query image is then presented as the *next* step, ``N*K + 1``, whose label input is - as
  in the paper - the label of the previous step: the last support image's, which is known. A
  query's own label is never an input. Each query is a separate branch from the state after the
  support sequence (the branches run batched, ``tasks * queries`` rows), so queries never see
  each other: a query's logits do not depend on the other queries, and a one-query request to the
  served model gets the answer batched evaluation gives.

Every class has been shown exactly ``K`` times before a query, so a query is the ``(K+1)``-th
instance of its class and query accuracy is the paper's instance-``K+1`` accuracy (5-way 1-shot
query accuracy = the paper's "2nd instance" column). The training loss is the cross-entropy of
every prediction made, support steps and query steps (the paper trains on every step; in 1-shot
the support steps are all first instances, where the best a model can do is name a label not
shown yet). The reported ``accuracy`` is query accuracy. (Presenting the whole labelled training
episode as one long sequence instead, support and query images mixed, is closer still to the
paper's training, but on this project's glyphs it settled on label-counting tricks - which
score above chance on first and second instances inside a sequence but nothing on queries -
within the same budget, so training uses the very protocol ``predict`` is scored with.)

Deviations from the paper (and why)
-----------------------------------

- ``write_vector=True`` (default): rows receive a separate "add" vector ``a_t`` (``tanh`` of a
  linear map of ``h_t``, as in the Neural Turing Machine) instead of the key ``k_t`` itself, which
  the paper writes. With one vector for both, the key that must *find* the current image is also
  what gets *stored* next to the previous label. Measured here (5-way 1-shot, 16 tasks per step,
  classes drawn as one fixed random 8x8 image each): after 1,200 steps query accuracy was 20.5%
  (chance) with the key written and 61% with the add vector. ``write_vector=False`` is the
  paper's rule.
- ``key_strength=True`` (default): the cosine similarities are multiplied by a learned key
  strength ``1 + softplus(.)`` per head (NTM content addressing) before the softmax. Without it,
  a softmax over cosines in ``[-1, 1]`` spreads every read over all rows (largest weight ratio
  ``e^2``). In the same measurement it helped modestly (64% with it and the add vector, 61%
  without). ``key_strength=False`` is the paper's rule.
- Each read head writes to its own least-used row (the ``i``-th least used, ties broken by row
  index) instead of every head writing to all ``n`` of them; with one head this is the paper's rule.
- Memory starts at a tiny constant (as common re-implementations do), usage and previous read
  weights at zero; keys are ``tanh`` of a linear map of ``h_t``.
- Adam instead of the paper's RMSProp, with gradient-norm clipping.
- The output layer has ``ways`` units and the label input is ``ways`` wide, so a trained MANN
  scores only episodes of that many ways (:meth:`MANN.check_ways`).
- ``predict`` runs in eval mode without a graph; with ``encoder="conv"`` batch-norm then uses its
  running statistics, so a query's logits depend only on its task's support set and itself.

Everything is vectorised over the task axis; only the loop over time steps is sequential, as it
is inherent to the model. MANN learns slowly (the paper trained on 100,000 episodes). On this
project's synthetic glyphs (5-way 1-shot, pixels, controller 128, 16x32 memory, 1 head, 16 tasks
per step) test accuracy stays at chance for ~1,200 steps at 28x28 pixels, then reaches ~25% at
1,500 and ~28% at 4,000 steps. Down-sampled as the paper does (it used 20x20), it learns far
sooner: at 14x14, 39% after 1,000 steps and 46% after 1,500. With the Conv-4 encoder a step costs
~5x more on a CPU and showed no gain in its first 500 steps either, which is why pixels are the
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import build_backbone
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.hparam_checks import at_least, one_of, positive, within
from learners.metric import accuracy, evaluating
from learners.space import Choice, Float, Int, SearchSpace
from tasks.episodes import EpisodeBatch

ENCODERS: tuple[str, ...] = ("conv", "pixels")
PREDICT_ORDER_SEED = 0  # seeds the one support order ``predict`` uses (deterministic predictions)
_MEMORY_INIT = 1e-6
_EPS = 1e-8


@dataclass(frozen=True)
class MannHyperparams(BackboneHyperparams):
    """MANN hyperparameters (sizes default to the paper's Omniglot model; the backbone knobs: ``encoder="conv"``)."""

    lr: float = 1e-3
    encoder: str = "pixels"  # pixels (the paper) | conv (the backbone: Conv-4 or ResNet-12)
    controller_size: int = 200  # LSTM units
    memory_slots: int = 128  # rows of the memory matrix
    memory_size: int = 40  # columns (key and row size)
    read_heads: int = 4
    gamma: float = 0.95  # usage decay
    key_strength: bool = True  # learned sharpening of the cosine read weights (NTM); False: the paper
    write_vector: bool = True  # write an "add" vector instead of the key (NTM); False: the paper
    grad_clip: float = 10.0  # max gradient norm (<= 0: no clipping)

    def validate(self) -> None:
        super().validate()
        positive("lr", self.lr)
        one_of("encoder", self.encoder, ENCODERS)
        if self.encoder == "pixels" and self.backbone != "conv4":
            raise ValueError(
                f"backbone {self.backbone!r} needs encoder 'conv' (the default encoder, pixels, has no backbone); "
                f"set encoder: conv"
            )
        for name in ("controller_size", "memory_slots", "memory_size", "read_heads"):
            at_least(name, getattr(self, name), 1)
        if self.read_heads > self.memory_slots:
            raise ValueError(
                f"read_heads ({self.read_heads}) must not exceed memory_slots ({self.memory_slots}): "
                "each head writes to its own least-used row"
            )
        within("gamma", self.gamma, 0.0, 1.0)  # usage decay


@dataclass
class MemoryState:
    """Controller and memory state of ``B`` independent sequences (values after step ``t-1``)."""

    h: torch.Tensor  # [B, controller]
    c: torch.Tensor  # [B, controller]
    memory: torch.Tensor  # [B, slots, size]            M_{t-1}
    usage: torch.Tensor  # [B, slots]                   w^u_{t-1}
    read_weights: torch.Tensor  # [B, heads, slots]     w^r_{t-1}
    reads: torch.Tensor  # [B, heads, size]             r_{t-1}

    def repeat(self, times: int) -> MemoryState:
        """Each sequence's state repeated ``times`` times in a row (``[B*times, ...]``): branches."""
        return MemoryState(
            *(
                t.repeat_interleave(times, dim=0)
                for t in (self.h, self.c, self.memory, self.usage, self.read_weights, self.reads)
            )
        )


@dataclass
class Sequence:
    """One pass over ``T`` sequences of ``L`` steps (see :meth:`MANN.run_sequence`)."""

    logits: torch.Tensor  # [T, L, ways], in presentation order
    labels: torch.Tensor  # [T, L], the labels in presentation order
    order: torch.Tensor  # [T, L], index (into the given images) presented at each step
    label_inputs: torch.Tensor  # [T, L, ways], the label input of each step
    write_weights: torch.Tensor  # [T, L, heads, slots]
    state: MemoryState  # after the last step


@dataclass
class Episodes:
    """Support sequences plus one branched query step per query (see :meth:`MANN.run_episodes`)."""

    support: Sequence
    query_label_input: torch.Tensor  # [T, ways], the label input of every query step of a task
    query_logits: torch.Tensor  # [T, NQ, ways]


def cosine_read_weights(keys: torch.Tensor, memory: torch.Tensor, strength: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax`` over rows of the cosine similarity (times ``strength`` ``[B, H]`` if given):
    keys ``[B, H, D]``, memory ``[B, S, D]`` -> ``[B, H, S]``."""
    dots = torch.einsum("bhd,bsd->bhs", keys, memory)
    norms = keys.norm(dim=-1)[..., :, None] * memory.norm(dim=-1)[..., None, :]
    similarity = dots / (norms + _EPS)
    if strength is not None:
        similarity = similarity * strength[..., None]
    return torch.softmax(similarity, dim=-1)


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """One-hot ``[B, n, S]``: row ``i`` marks the ``i``-th least-used slot (ties: lowest index)."""
    index = torch.argsort(usage.detach(), dim=-1, stable=True)[:, :n]
    return F.one_hot(index, usage.shape[-1]).to(usage.dtype)


def lrua_step(
    state: MemoryState,
    keys: torch.Tensor,
    gate_logits: torch.Tensor,
    gamma: float,
    strength: torch.Tensor | None = None,
    content: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LRUA write-then-read on ``B`` memories.

    ``keys`` ``[B, H, D]``; ``gate_logits`` ``[B, H]`` (``alpha_t``); ``strength`` ``[B, H]`` (read
    sharpening; ``None``: the paper's plain cosine softmax); ``content`` ``[B, H, D]`` (what is
    written; ``None``: the key, as in the paper). Returns ``(memory, usage, read_weights, reads,
    write_weights)`` of step ``t``.
    """
    w_lu = least_used(state.usage, keys.shape[1])  # w^lu_{t-1}, from w^u_{t-1}
    gate = torch.sigmoid(gate_logits)[..., None]
    write_weights = gate * state.read_weights + (1.0 - gate) * w_lu  # [B, H, S]
    keep = 1.0 - w_lu.sum(dim=1)  # the least-used rows are zeroed before writing
    content = keys if content is None else content
    memory = state.memory * keep[..., None] + torch.einsum("bhs,bhd->bsd", write_weights, content)
    read_weights = cosine_read_weights(keys, memory, strength)
    reads = torch.einsum("bhs,bsd->bhd", read_weights, memory)
    usage = gamma * state.usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    return memory, usage, read_weights, reads, write_weights


def offset_labels(labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Label inputs ``[T, L, ways]`` of sequences labelled ``[T, L]``: step ``t`` gets
    ``onehot(labels[t - 1])``, step 0 a zero vector."""
    onehot = F.one_hot(labels, ways).float()
    return torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], dim=1)


class MANN(Learner):
    """LSTM controller + LRUA external memory; labels shown one step late (see the module docstring)."""

    family: ClassVar[str] = "mann"
    paper: ClassVar[str] = "Santoro et al. 2016, One-shot learning with memory-augmented neural networks (ICML 2016)"
    fixed_ways: ClassVar[bool] = True
    Hyperparams: ClassVar[type] = MannHyperparams
    search_space: ClassVar[SearchSpace] = {
        "lr": Float(1e-4, 3e-3, log=True),
        "encoder": Choice(ENCODERS),
        "controller_size": Int(64, 256, log=True),
        "memory_slots": Int(16, 128, log=True),
        "memory_size": Int(16, 64, log=True),
        "read_heads": Int(1, 4),
        "gamma": Float(0.8, 0.99),
        "width": Choice((32, 64)),
        "depth": Int(2, 4),
    }

    def __init__(self, hparams: MannHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        if hparams.encoder == "conv":
            self.encoder: nn.Module = build_backbone(hparams, self.image_shape, running_stats=True)
            features = self.encoder.embedding_dim
        else:
            self.encoder = nn.Flatten()
            features = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        heads, size, hidden = hparams.read_heads, hparams.memory_size, hparams.controller_size
        self.controller = nn.LSTMCell(features + ways + heads * size, hidden)
        self.key_layer = nn.Linear(hidden, heads * size)
        self.gate_layer = nn.Linear(hidden, heads)
        self.strength_layer = nn.Linear(hidden, heads) if hparams.key_strength else None
        self.write_layer = nn.Linear(hidden, heads * size) if hparams.write_vector else None
        self.output_layer = nn.Linear(hidden + heads * size, ways)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams.lr)
        # Training presents each episode in a fresh random order; the generator is seeded from
        # the global one (a run's seed fixes it) and checkpointed with the optimizer.
        self._order_rng = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))

    # --- the contract -------------------------------------------------------------------------

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One update on ``batch`` presented exactly as :meth:`predict` presents a task; the loss
        covers every prediction made (support steps and query steps)."""
        self.check_ways(batch.ways)
        self.train()
        out = self.run_episodes(batch.support_x, batch.support_y, batch.query_x, self._order_rng)
        logits = torch.cat([out.support.logits, out.query_logits], dim=1)
        labels = torch.cat([out.support.labels, batch.query_y], dim=1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.hparams.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(out.query_logits.detach(), batch.query_y)}

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        self.check_ways(episode_ways(support_y))
        order = torch.randperm(support_y.shape[1], generator=torch.Generator().manual_seed(PREDICT_ORDER_SEED))
        with torch.no_grad(), evaluating(self):
            return self.run_episodes(support_x, support_y, query_x, order).query_logits

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "order_rng": self._order_rng.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "order_rng" in state:
            self._order_rng.set_state(state["order_rng"])

    # --- the model ----------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[T, n, F]`` of images ``[T, n, C, H, W]`` (one encoder call for all)."""
        return self.encoder(images.flatten(0, 1)).unflatten(0, images.shape[:2])

    def initial_state(self, batch: int) -> MemoryState:
        hp = self.hparams
        like = self.output_layer.weight
        return MemoryState(
            h=like.new_zeros(batch, hp.controller_size),
            c=like.new_zeros(batch, hp.controller_size),
            memory=like.new_full((batch, hp.memory_slots, hp.memory_size), _MEMORY_INIT),
            usage=like.new_zeros(batch, hp.memory_slots),
            read_weights=like.new_zeros(batch, hp.read_heads, hp.memory_slots),
            reads=like.new_zeros(batch, hp.read_heads, hp.memory_size),
        )

    def step(
        self, features: torch.Tensor, label_input: torch.Tensor, state: MemoryState
    ) -> tuple[torch.Tensor, MemoryState, torch.Tensor]:
        """One time step of ``B`` sequences: ``(logits [B, ways], next state, write weights [B, H, S])``."""
        hp = self.hparams
        h, c = self.controller(torch.cat([features, label_input, state.reads.flatten(1)], dim=1), (state.h, state.c))
        keys = torch.tanh(self.key_layer(h)).unflatten(1, (hp.read_heads, hp.memory_size))
        strength = None if self.strength_layer is None else 1.0 + F.softplus(self.strength_layer(h))
        content = None
        if self.write_layer is not None:
            content = torch.tanh(self.write_layer(h)).unflatten(1, (hp.read_heads, hp.memory_size))
        memory, usage, read_weights, reads, write_weights = lrua_step(
            state, keys, self.gate_layer(h), hp.gamma, strength, content
        )
        logits = self.output_layer(torch.cat([h, reads.flatten(1)], dim=1))
        return logits, MemoryState(h, c, memory, usage, read_weights, reads), write_weights

    def run_sequence(
        self, features: torch.Tensor, labels: torch.Tensor, order: torch.Generator | torch.Tensor | None = None
    ) -> Sequence:
        """Present ``features`` ``[T, L, F]`` in the ``order`` given (a permutation ``[L]`` used for
        every task), or in a random order per task drawn from ``order`` (a CPU generator), with each
        step's label one step late, from a fresh memory."""
        tasks, length = labels.shape
        if isinstance(order, torch.Tensor):
            order = order.to(labels.device).expand(tasks, -1)
        else:
            order = torch.argsort(torch.rand(tasks, length, generator=order), dim=1).to(labels.device)
        features = features.gather(1, order[..., None].expand(-1, -1, features.shape[-1]))
        labels = labels.gather(1, order)
        label_inputs = offset_labels(labels, self.ways)
        state = self.initial_state(tasks)
        logits, writes = [], []
        for t in range(length):
            step_logits, state, write_weights = self.step(features[:, t], label_inputs[:, t], state)
            logits.append(step_logits)
            writes.append(write_weights)
        return Sequence(
            logits=torch.stack(logits, dim=1),
            labels=labels,
            order=order,
            label_inputs=label_inputs,
            write_weights=torch.stack(writes, dim=1),
            state=state,
        )

    def run_episodes(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        order: torch.Generator | torch.Tensor | None = None,
    ) -> Episodes:
        """The support set as a shuffled sequence, then every query as its own next step (whose
        label input is the last support step's label): the ``predict`` protocol."""
        tasks, shots_total = support_y.shape
        queries = query_x.shape[1]
        features = self.encode(torch.cat([support_x, query_x], dim=1))
        support = self.run_sequence(features[:, :shots_total], support_y, order)
        query_label = F.one_hot(support.labels[:, -1], self.ways).float()
        query_logits, _, _ = self.step(
            features[:, shots_total:].flatten(0, 1),
            query_label.repeat_interleave(queries, dim=0),
            support.state.repeat(queries),
        )
        return Episodes(support, query_label, query_logits.unflatten(0, (tasks, queries)))
