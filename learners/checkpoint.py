"""Save and load a learner as two files: ``learner.json`` (what it is) and ``learner.pt`` (weights).

Weights load with ``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learners.base import Learner
from learners.registry import get_family, make_hparams
from tasks import atomic

SPEC_FILE = "learner.json"
WEIGHTS_FILE = "learner.pt"


def learner_spec(learner: Learner) -> dict[str, Any]:
    """What is needed to rebuild ``learner`` before its weights are loaded."""
    return {
        "family": learner.family,
        "hparams": dataclasses.asdict(learner.hparams),
        "image_shape": list(learner.image_shape),
        "ways": learner.ways,
    }


def build_learner(spec: dict[str, Any], device: torch.device | str = "cpu") -> Learner:
    """A freshly initialised learner from a spec (``family``, ``hparams``, ``image_shape``, ``ways``)."""
    learner_cls = get_family(spec["family"])
    hparams = make_hparams(spec["family"], spec.get("hparams"))
    return learner_cls(hparams, tuple(spec["image_shape"]), int(spec["ways"])).to(device)


def fresh_learner(spec: dict[str, Any], seed: int, device: torch.device | str = "cpu") -> Learner:
    """The learner a trial seeded with ``seed`` starts from: torch and NumPy seeded, then built."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return build_learner(spec, device)


def save_learner(learner: Learner, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``learner`` (weights, optimizer state, ``extra`` such as the iteration) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": learner.state_dict(), "extra_state": learner.extra_state(), "extra": extra or {}}
    atomic.write_file(directory / WEIGHTS_FILE, lambda f: torch.save(state, f))
    text = json.dumps(learner_spec(learner), indent=2, sort_keys=True)
    atomic.write_file(directory / SPEC_FILE, lambda f: f.write(text.encode()))


def load_learner(directory: str | Path, device: torch.device | str = "cpu") -> tuple[Learner, dict[str, Any]]:
    """The learner saved in ``directory`` and the ``extra`` dict saved with it."""
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"learner checkpoint incomplete: {path} is missing")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{spec_path} is not valid JSON: {exc}") from None
    learner = build_learner(spec, device)
    state = torch.load(weights_path, map_location=device, weights_only=True)
    learner.load_state_dict(state["model"])
    learner.load_extra_state(state.get("extra_state", {}))
    return learner, state.get("extra", {})
