"""Matching networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016,
Matching Networks for One Shot Learning).

A query ``x̂`` is labelled by attention over the support set ``S = {(x_i, y_i)}``:
``P(y | x̂, S) = Σ_i a(x̂, x_i) y_i`` with ``a(x̂, x_i) = softmax_i(cos(f(x̂), g(x_i)))``, ``y_i``
one-hot. Trained end to end on episodes with the log-likelihood of the query labels.

Without full-context embeddings (``fce=False``, the paper's Omniglot setting) ``f = g =`` the
Conv-4 embedding. With ``fce=True`` (the paper's appendix):

- ``g(x_i, S) = g'(x_i) + h→_i + h←_i``: a bidirectional LSTM (hidden size = embedding size)
  runs over the support embeddings ``g'(x_i)`` in support order; its two directions' outputs
  are added to the embedding (a skip connection).
- ``f(x̂, S) = attLSTM(f'(x̂), g(S), K)``: ``K = fce_steps`` read steps of an LSTM whose input is
  always ``f'(x̂)`` and whose hidden state is the concatenation ``[h_{k-1}, r_{k-1}]``:
  ``ĥ_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1})``, ``h_k = ĥ_k + f'(x̂)``,
  ``r_k = Σ_i softmax_i(h_kᵀ g(x_i)) g(x_i)``; ``f = h_K``.

Choices made:

- ``f'`` and ``g'`` are one shared backbone (Conv-4 as in the paper's Omniglot model, or ResNet-12;
  both searched, :mod:`learners.backbones`).
- The attention LSTM is written out (one linear map of ``[f', h, r]`` to the four gates),
  because its hidden state ``[h, r]`` is twice the width of its output, which ``nn.LSTMCell``
  cannot express. Its state starts at ``h_0 = 0``, ``c_0 = 0`` (so ``r_0`` is the plain mean of
  ``g(S)``); the paper leaves the start unspecified.
- The read attention inside the LSTM uses dot products (the appendix's ``a(h, g) = softmax(hᵀg)``);
  the final classification attention uses cosine similarity without a temperature, as in the
  paper.
- All queries of all tasks run the read steps together (a ``[T, NQ, ·]`` batch), and the
  bidirectional LSTM runs over all tasks' support sequences as one batch.
- ``predict`` returns ``log P(y | x̂, S)`` (a normalised log-distribution; its softmax is ``P``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from learners.backbones import DROPBLOCK_RATES, backbone_names, build_backbone
from learners.base import BackboneHyperparams
from learners.hparam_checks import at_least, positive
from learners.metric import EpisodeLossLearner, channels_last, embed_tasks, one_hot_support
from learners.space import Choice, Float, Int


@dataclass(frozen=True)
class MatchingHyperparams(BackboneHyperparams):
    lr: float = 1e-3
    fce: bool = False  # full-context embeddings (appendix of the paper)
    fce_steps: int = 5  # K, read steps of the attention LSTM (only with fce)

    def validate(self) -> None:
        super().validate()
        positive("lr", self.lr)
        at_least("fce_steps", self.fce_steps, 1)


class SupportContext(nn.Module):
    """``g(x_i, S) = g'(x_i) + h→_i + h←_i`` from a bidirectional LSTM over the support set."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        """``[T, S, D] -> [T, S, D]``."""
        out, _ = self.lstm(support)
        forward, backward = out.chunk(2, dim=-1)
        return support + forward + backward


class AttentionLSTM(nn.Module):
    """``f(x̂, S)``: ``steps`` read steps of an LSTM attending over ``g(S)``."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.gates = nn.Linear(3 * dim, 4 * dim)  # input f' (D) + hidden [h, r] (2D) -> i, f, g, o

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``query [T, NQ, D]`` (``f'``), ``support [T, S, D]`` (``g``) -> ``[T, NQ, D]``."""
        h = torch.zeros_like(query)
        c = torch.zeros_like(query)
        for _ in range(self.steps):
            attention = torch.softmax(torch.bmm(h, support.transpose(1, 2)), dim=-1)  # [T, NQ, S]
            read = torch.bmm(attention, support)
            i, f, g, o = self.gates(torch.cat([query, h, read], dim=-1)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c) + query
        return h


class Matching(EpisodeLossLearner):
    """Matching network: cosine attention over the support set, optional full-context embeddings."""

    family: ClassVar[str] = "matching"
    paper: ClassVar[str] = (
        "Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, Matching Networks for One Shot Learning (NeurIPS)"
    )
    Hyperparams = MatchingHyperparams
    search_space = {
        "lr": Float(1e-4, 1e-2, log=True),
        "width": Choice((32, 64, 128)),
        "depth": Int(2, 4),
        "fce": Choice((False, True)),
        "fce_steps": Int(1, 10),
        "backbone": Choice(backbone_names()),
        "dropblock": Choice(DROPBLOCK_RATES),
    }

    def __init__(self, hparams: MatchingHyperparams, image_shape: tuple[int, int, int], ways: int) -> None:
        super().__init__(hparams, image_shape, ways)
        self.encoder = build_backbone(hparams, image_shape, running_stats=True)
        dim = self.encoder.embedding_dim
        self.support_context = SupportContext(dim) if hparams.fce else None
        self.query_context = AttentionLSTM(dim, hparams.fce_steps) if hparams.fce else None
        channels_last(self)
        self.make_optimizer()

    def embed(self, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g(S) [T, S, D]`` and ``f(x̂) [T, NQ, D]`` (full-context when ``fce``)."""
        support, query = embed_tasks(self.encoder, support_x, query_x)
        if self.support_context is not None and self.query_context is not None:  # hparams.fce
            support = self.support_context(support)
            query = self.query_context(query, support)
        return support, query

    def attention(self, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """``a(x̂, x_i)``: softmax over the support set of cosine similarities, ``[T, NQ, S]``."""
        support, query = self.embed(support_x, query_x)
        cosine = torch.bmm(F.normalize(query, dim=-1), F.normalize(support, dim=-1).transpose(1, 2))
        return torch.softmax(cosine, dim=-1)

    def scores(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        attention = self.attention(support_x, query_x)
        probabilities = torch.bmm(attention, one_hot_support(support_y, attention.dtype))
        # Cosines lie in [-1, 1], so every weight is at least e^-2 / |S|: no log(0).
        return probabilities.log()
