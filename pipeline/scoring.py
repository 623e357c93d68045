"""Episode accuracy and its 95% confidence interval: the one scoring path for val and test."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from learners.base import Learner
from tasks.episodes import EpisodeBatch


def episode_accuracies(learner: Learner, batches: Iterable[EpisodeBatch], device: torch.device) -> np.ndarray:
    """Query accuracy of every episode in ``batches`` (in order), via ``learner.predict``."""
    return score_episodes(learner, batches, device)[0]


def score_episodes(
    learner: Learner, batches: Iterable[EpisodeBatch], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Every episode's query accuracy (in order) and the confusion counts over all of them:
    ``[ways, outputs]``, row = a query's episode label, column = the predicted one."""
    scores, confusion = [], None
    for batch in batches:
        batch = batch.to(device)
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        predicted = logits.detach().argmax(dim=-1)
        scores.append((predicted == batch.query_y).cpu().double().mean(dim=1))  # k/n in float64, as a client counts
        outputs = logits.shape[-1]  # the ways, unless a fixed head has more outputs
        pairs = (batch.query_y * outputs + predicted).flatten().cpu()
        counts = torch.bincount(pairs, minlength=batch.ways * outputs).reshape(batch.ways, outputs)
        confusion = counts if confusion is None else confusion + counts
    matrix = confusion.numpy() if confusion is not None else np.zeros((0, 0), dtype=np.int64)
    return torch.cat(scores).numpy(), matrix


def mean_ci95(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean accuracy and the 95% confidence interval half-width 1.96 * std / sqrt(n)."""
    n = len(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
    return float(np.mean(accuracies)), 1.96 * std / math.sqrt(n)
