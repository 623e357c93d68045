"""Resolving the configured device (auto | cpu | cuda) to a torch device, honestly.

A trial that Ray gave GPUs checks that torch can see them: Ray only sets
``CUDA_VISIBLE_DEVICES``, so a CPU build of torch, a missing driver or a node that declared GPUs
it does not have would otherwise train on CPU with nobody told.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class TrialDevice:
    """The device a trial trains on, its name, and why it is not the GPU it was given (if so)."""

    device: torch.device
    name: str  # "cuda:0 (NVIDIA A10G)" or "cpu"
    warning: str | None = None


def pick_device(setting: str) -> torch.device:
    """``cuda`` when asked for (or on ``auto`` when torch sees a GPU), else ``cpu``."""
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise PipelineError("device is 'cuda' but torch sees no CUDA device here; set device: auto or cpu")
    return torch.device("cuda" if setting != "cpu" and available else "cpu")


def trial_device(setting: str, gpu_ids: Sequence[object]) -> TrialDevice:
    """The device for a trial holding Ray GPUs ``gpu_ids``: CUDA only with GPUs it holds.

    ``cuda`` without a CUDA device torch can use is an error; ``auto`` then trains on CPU and
    says why in ``warning``. A trial holding no GPU trains on CPU.
    """
    if setting == "cpu" or (setting == "auto" and not gpu_ids):
        return TrialDevice(torch.device("cpu"), "cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)  # Ray's CUDA_VISIBLE_DEVICES makes the trial's first GPU index 0
        return TrialDevice(device, f"cuda:0 ({torch.cuda.get_device_name(device)})")
    held = f"Ray gave this trial GPU(s) {','.join(map(str, gpu_ids))}" if gpu_ids else "this trial holds no Ray GPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    why = f"torch sees no CUDA device ({held}; CUDA_VISIBLE_DEVICES={visible}; {_torch_build()})"
    if setting == "cuda":
        raise PipelineError(
            f"device is 'cuda' but {why}; install a CUDA build of torch on the GPU nodes or set device: auto"
        )
    return TrialDevice(torch.device("cpu"), "cpu", f"training on CPU: {why}")


def _torch_build() -> str:
    if torch.version.cuda:
        return f"torch {torch.__version__} built for CUDA {torch.version.cuda}"
    return f"torch {torch.__version__} is a CPU-only build"
