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
    scores = []
    for batch in batches:
        batch = batch.to(device)
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        correct = logits.detach().argmax(dim=-1) == batch.query_y
        scores.append(correct.cpu().double().mean(dim=1))  # k/n in float64, as a client counting hits gets it
    return torch.cat(scores).numpy()


def mean_ci95(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean accuracy and the 95% confidence interval half-width 1.96 * std / sqrt(n)."""
    n = len(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
    return float(np.mean(accuracies)), 1.96 * std / math.sqrt(n)
