"""Meta Networks (Munkhdalai & Yu 2017, "Meta Networks", ICML).

MetaNet pairs slowly learned weights with *fast weights* that a meta-learner generates, for each
task, from loss gradients on the support set (the "meta information"). The paper's components,
and what this module keeps:

- **Base learner** ``b`` with slow weights ``W`` (here: a backbone embedding from
  :mod:`learners.backbones`, then an augmented hidden layer and an augmented ``ways``-way output
  layer). Kept. Both trunks (``u``'s and ``b``'s) are the backbone, Conv-4 or ResNet-12 (searched:
  only the fully connected layers on top get fast weights, so ResNet-12's 640 averaged features
  keep the memory ``M`` smaller than Conv-4's flattened map at 84x84).
- **Example-level fast weights** ``W*_i = m(Z, grad_W loss_task(b(W, x'_i), y'_i))``: one set per
  support example, from the gradient of that example's cross-entropy under the slow weights
  alone, stored in a memory ``M = {W*_i}``. Kept; ``m`` is a 3-layer MLP applied to every weight
  coordinate separately (shared across coordinates, as a generator for a whole weight matrix
  would be far too large), on gradients preprocessed as in Andrychowicz et al. 2016
  (``(log|g|/p, sign g)``, or ``(-1, e^p g)`` for tiny ``g``, ``p=10``) so that their scale, which
  varies by orders of magnitude, does not matter.
- **Dynamic representation learner** ``u`` with slow weights ``Q`` and *task-level* fast weights
  ``Q* = d(G, {grad_Q loss_emb})``: ``d`` is an LSTM (the paper reports an MLP ``d`` converged
  poorly) run over the gradients of ``T`` embedding losses, coordinate-wise; its last hidden
  state is mapped to the fast weight of that coordinate. Kept. ``loss_emb`` is the contrastive
  variant the paper describes, on pairs of support examples: a same/different cross-entropy on the cosine
  similarity of the two representations (fixed scale 5, centred at 0.5; with 1-shot support all
  pairs are "different", which still tells ``d`` what separates this task's classes). ``T =
  pairs``: all ``i < j`` support pairs if there are at most that many, else a fixed subset (a
  fixed-seed draw, so ``predict`` is deterministic; the sampler already randomises which class
  and image sits at each support index).
- **Memory index** ``R = {r'_i = u(Q, Q*, x'_i)}``: the support representations under the fast
  representation weights. Kept.
- **Read-out**: for a query ``x``, ``r = u(Q, Q*, x)``, attention ``a_i = softmax_i(cosine(r,
  r'_i))`` over the support examples, ``W* = sum_i a_i W*_i``, and the prediction ``b(W, W*, x)``.
  Kept as is (plain softmax of the cosine, no temperature).
- **Layer augmentation**: an augmented layer has a slow and a fast weight matrix fed the same
  input; each path goes through its own nonlinearity and the two are summed, ``ReLU(W h) +
  ReLU(W* h)``. Kept for the hidden layers (``u``'s representation layer and ``b``'s hidden
  layer); the output layer, whose outputs are logits, sums the two linear paths ``W h + W* h``
  (a ReLU on logits would forbid negative scores).
- **Which layers are augmented**: the paper augments layers of both networks; here the convolutional
  trunks are slow-only and the fully connected layers on top of them are augmented (``u``: one
  representation layer; ``b``: the hidden and the output layer). This keeps the per-example
  memory ``M`` small (``support x (features*hidden + hidden*ways)`` numbers per task) and the
  coordinate-wise generators cheap; the conv trunks still adapt through their slow weights.
- **Optimisation**: the task loss is the cross-entropy of the queries (the paper's training-set
  loss); slow weights ``W, Q`` and the generators' weights ``Z, G`` are all trained by it with
  Adam. The meta information (the support-loss gradients) enters ``m`` and ``d`` as input data
  and is not differentiated through (no second-order terms): a choice made here, which costs
  one extra (per-example, vectorised) gradient instead of a double backward; the slow weights
  still learn through the paths that use them directly. Fast weights have no bias terms (slow
  layers keep theirs), and the last bias of ``m`` and ``d`` starts at zero: a shared nonzero
  offset on every generated coordinate, times non-negative features, can leave a fast ReLU
  path dead from the start.

Vectorised over tasks: each conv trunk sees the support images of the whole meta-batch in one
call and the query images in another (so even training-mode batch statistics of the support set
never include a query image), the per-example and per-pair gradients come from
``torch.func.vmap(grad(...))`` over tasks and examples, and the generators run over all
coordinates of all tasks at once. Training and ``predict`` take the same path,
``classify(adapt(support), query)``: the fast weights come from the support set alone
(:meth:`MetaNet.adapt` never sees a query image). ``predict`` runs in eval mode (batch-norm
running statistics) and without a graph, so a query's logits do not depend on the other queries
or tasks. The output layer has ``ways`` units, so a trained model scores only
episodes of that many ways (:meth:`MetaNet.check_ways`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from learners.backbones import DROPBLOCK_RATES, backbone_names, build_backbone
from learners.base import BackboneHyperparams, Learner, episode_ways
from learners.gradient_encoding import preprocess_gradients
from learners.hparam_checks import at_least, positive
from learners.metric import accuracy, embed_tasks, evaluating
from learners.space import Choice, Float, Int, SearchSpace
from tasks.episodes import EpisodeBatch

EMB_SCALE, EMB_CENTER = 5.0, 0.5  # same/different logit = scale * (cosine - center)
PAIR_SEED = 0  # the fixed subset of support pairs when there are more than ``pairs``
_EPS = 1e-8


@dataclass(frozen=True)
class MetaNetHyperparams(BackboneHyperparams):
    """MetaNet hyperparameters (the backbone knobs: the two trunks)."""

    lr: float = 1e-3
    representation_dim: int = 64  # size of u's augmented layer (the memory keys r)
    hidden_dim: int = 64  # size of b's augmented hidden layer
    generator_hidden: int = 20  # hidden units of m (MLP) and d (LSTM)
    pairs: int = 16  # T: support pairs behind the representation fast weights
    grad_clip: float = 10.0  # max gradient norm (<= 0: no clipping)

    def validate(self) -> None:
        super().validate()
        positive("lr", self.lr)
        for name in ("representation_dim", "hidden_dim", "generator_hidden", "pairs"):
            at_least(name, getattr(self, name), 1)


@dataclass
class FastWeights:
    """What :meth:`MetaNet.adapt` derives from the support set of ``T`` tasks (``S`` examples each)."""

    representation: torch.Tensor  # Q*: [T, R, F_u], task-level fast weights of u's layer
    keys: torch.Tensor  # R = {r'_i}: [T, S, R], the memory index
    hidden: torch.Tensor  # M, hidden layer: [T, S, H, F_b], example-level fast weights
    output: torch.Tensor  # M, output layer: [T, S, ways, H]

    def zeroed(self) -> FastWeights:
        """The same memory with every fast weight zero (the slow-weight-only network)."""
        return replace(
            self,
            representation=torch.zeros_like(self.representation),
            hidden=torch.zeros_like(self.hidden),
            output=torch.zeros_like(self.output),
        )


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis, broadcasting the others (0 for a zero vector)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)


def support_pairs(n: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``(i, j)``, ``i < j < n``: all of them, or a fixed subset of ``limit``."""
    first, second = torch.triu_indices(n, n, offset=1)
    if len(first) > limit:
        keep = torch.randperm(len(first), generator=torch.Generator().manual_seed(PAIR_SEED))[:limit]
        keep = keep.sort().values
        first, second = first[keep], second[keep]
    return first, second


class MetaNet(Learner):
    """Slow weights + support-gradient-generated fast weights, read from a memory by attention."""

    family: ClassVar[str] = "metanet"
    paper: ClassVar[str] = "Munkhdalai & Yu 2017, Meta Networks (ICML 2017)"
    fixed_ways: ClassVar[bool] = True
    Hyperparams: ClassVar[type] = MetaNetHyperparams
    search_space: ClassVar[SearchSpace] = {
        "lr": Float(1e-4, 3e-3, log=True),
        "representation_dim": Int(32, 128, log=True),
        "hidden_dim": Int(32, 128, log=True),
        "generator_hidden": Int(10, 40, log=True),
        "pairs": Int(4, 32, log=True),
        "width": Choice((32, 64)),
        # depth >= 3: with 28x28 images fewer blocks leave a large flattened map, and every
        # coordinate of the augmented layers' weights is a row for the generators.
        "depth": Int(3, 4),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: MetaNetHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        hp = hparams
        # u: representation learner (slow Q: trunk + layer; fast Q*: the layer only)
        self.u_trunk = build_backbone(hp, self.image_shape, running_stats=True)
        self.u_layer = nn.Linear(self.u_trunk.embedding_dim, hp.representation_dim)
        # b: base learner (slow W; fast W*_i for the hidden and the output layer)
        self.b_trunk = build_backbone(hp, self.image_shape, running_stats=True)
        self.b_hidden = nn.Linear(self.b_trunk.embedding_dim, hp.hidden_dim)
        self.b_output = nn.Linear(hp.hidden_dim, ways)
        # m: example-level fast-weight generator (Z), coordinate-wise MLP
        g = hp.generator_hidden
        m_input, m_hidden, m_output = nn.Linear(2, g), nn.Linear(g, g), nn.Linear(g, 1)  # initialised in this order
        self.m = nn.Sequential(m_input, nn.ReLU(), m_hidden, nn.ReLU(), m_output)
        # d: task-level fast-weight generator (G), coordinate-wise LSTM over the pair gradients
        self.d_cell = nn.LSTMCell(2, g)
        self.d_output = nn.Linear(g, 1)
        # Generated weights start centred on zero (a default bias would give every coordinate the
        # same offset: with non-negative features, a layer that is all negative, i.e. a dead ReLU).
        for layer in (m_output, self.d_output):
            nn.init.zeros_(layer.bias)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr)

    # --- the contract -------------------------------------------------------------------------

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self.check_ways(batch.ways)
        self.train()
        # The same two calls as ``predict``: the support set and the queries go through the trunks
        # as separate batches, so even training-mode batch-norm statistics of the support images
        # (and with them the fast weights) never see a query image.
        logits = self.classify(self.adapt(batch.support_x, batch.support_y), batch.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.hparams.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(logits.detach(), batch.query_y)}

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        self.check_ways(episode_ways(support_y))
        with torch.no_grad(), evaluating(self):
            return self.classify(self.adapt(support_x, support_y), query_x)

    # --- MetaNet ------------------------------------------------------------------------------

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> FastWeights:
        """Fast weights and memory of each task from its support set ``[T, S, C, H, W]`` alone."""
        u_support = embed_tasks(self.u_trunk, support_x)[0]
        b_support = embed_tasks(self.b_trunk, support_x)[0]
        # Task-level Q*: d over the gradients of the pair (contrastive) losses w.r.t. u's layer.
        first, second = support_pairs(u_support.shape[1], self.hparams.pairs)
        first, second = first.to(support_y.device), second.to(support_y.device)
        same = (support_y[:, first] == support_y[:, second]).to(u_support.dtype)
        feats = u_support.detach()
        pair_grads = vmap(vmap(grad(self._pair_loss), in_dims=(None, None, 0, 0, 0)), in_dims=(None, None, 0, 0, 0))(
            self.u_layer.weight.detach(), self.u_layer.bias.detach(), feats[:, first], feats[:, second], same
        )  # [T, P, R, F_u]
        representation = self._generate_task_weights(pair_grads)

        # Example-level W*_i: m over each support example's task-loss gradient w.r.t. b's layers.
        slow = (
            self.b_hidden.weight.detach(),
            self.b_hidden.bias.detach(),
            self.b_output.weight.detach(),
            self.b_output.bias.detach(),
        )
        hidden_grads, output_grads = vmap(
            vmap(grad(self._example_loss, argnums=(0, 2)), in_dims=(None, None, None, None, 0, 0)),
            in_dims=(None, None, None, None, 0, 0),
        )(*slow, b_support.detach(), support_y)  # [T, S, H, F_b], [T, S, ways, H]
        hidden = self._generate_example_weights(hidden_grads)
        output = self._generate_example_weights(output_grads)

        keys = self._represent(u_support, representation)
        return FastWeights(representation=representation, keys=keys, hidden=hidden, output=output)

    def classify(self, fast: FastWeights, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits ``[T, NQ, ways]`` of the base learner with slow and fast weights."""
        u_query = embed_tasks(self.u_trunk, query_x)[0]
        b_query = embed_tasks(self.b_trunk, query_x)[0]
        r = self._represent(u_query, fast.representation)  # [T, Q, R]
        attention = torch.softmax(cosine(r[:, :, None], fast.keys[:, None]), dim=-1)  # [T, Q, S]
        # W*_q = sum_i a_qi W*_i, applied without forming it: sum_i a_qi (W*_i h_q).
        fast_hidden = torch.einsum("tqs,tqsh->tqh", attention, torch.einsum("tshf,tqf->tqsh", fast.hidden, b_query))
        hidden = F.relu(self.b_hidden(b_query)) + F.relu(fast_hidden)
        fast_logits = torch.einsum("tqs,tqsn->tqn", attention, torch.einsum("tsnh,tqh->tqsn", fast.output, hidden))
        return self.b_output(hidden) + fast_logits

    def _represent(self, u_features: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
        """u's augmented layer: ``ReLU(Q f) + ReLU(Q* f)`` (``Q*`` per task)."""
        return F.relu(self.u_layer(u_features)) + F.relu(torch.einsum("trf,tnf->tnr", representation, u_features))

    @staticmethod
    def _pair_loss(weight, bias, first, second, same):
        """Same/different cross-entropy of two support examples under u's slow layer."""
        similarity = cosine(F.relu(weight @ first + bias), F.relu(weight @ second + bias))
        return F.binary_cross_entropy_with_logits(EMB_SCALE * (similarity - EMB_CENTER), same)

    @staticmethod
    def _example_loss(hidden_weight, hidden_bias, output_weight, output_bias, features, label):
        """One support example's cross-entropy under b's slow layers."""
        logits = output_weight @ F.relu(hidden_weight @ features + hidden_bias) + output_bias
        return F.cross_entropy(logits, label)

    def _generate_example_weights(self, grads: torch.Tensor) -> torch.Tensor:
        """``m``: each coordinate's fast weight from its preprocessed gradient."""
        return self.m(preprocess_gradients(grads)).squeeze(-1)

    def _generate_task_weights(self, pair_grads: torch.Tensor) -> torch.Tensor:
        """``d``: an LSTM over the ``P`` pair gradients of each coordinate -> ``[T, *shape]``."""
        tasks, pairs, *shape = pair_grads.shape
        steps = preprocess_gradients(pair_grads).movedim(1, -2).reshape(-1, pairs, 2)  # [T*coords, P, 2]
        h = steps.new_zeros(steps.shape[0], self.d_cell.hidden_size)
        c = torch.zeros_like(h)
        for t in range(pairs):
            h, c = self.d_cell(steps[:, t], (h, c))
        return self.d_output(h).view(tasks, *shape)
