"""Resolving the configured device (auto | cpu | cuda) to a torch device."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def pick_device(setting: str) -> torch.device:
    """``cuda`` when asked for (or on ``auto`` when torch sees a GPU), else ``cpu``."""
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise PipelineError("device is 'cuda' but torch sees no CUDA device here; set device: auto or cpu")
    return torch.device("cuda" if setting != "cpu" and available else "cpu")
