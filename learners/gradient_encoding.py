"""Andrychowicz et al. 2016's coordinate-wise encoding of gradients (and losses) for meta-learners.

Each coordinate ``x`` becomes two numbers, ``(log|x| / p, sign x)`` when ``|x| >= e^-p`` and
``(-1, e^p x)`` otherwise, so values spanning many orders of magnitude reach a network on a
comparable scale. Used by the Meta-LSTM (Ravi & Larochelle 2017) and Meta Networks
(Munkhdalai & Yu 2017).
"""

from __future__ import annotations

import math

import torch

PREPROCESS_P = 10.0  # Andrychowicz et al. 2016


def preprocess_gradients(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """The encoding of each coordinate of ``x``: ``[...] -> [..., 2]``."""
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    sign_part = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)
