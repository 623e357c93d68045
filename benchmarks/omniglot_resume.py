"""A cell's record, and which records of the previous run ``bench omniglot --resume`` keeps.

A finished cell is kept when the previous run used the same datasets, test episodes and seed, and the
cell would repeat exactly (:data:`CELL_IDENTITY`); a new ``--tuned`` column or an edited family file
costs only the cells it changes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from benchmarks.omniglot_jobs import Job
from learners.registry import make_hparams
from pipeline.io import read_json

# What makes two cells the same experiment: a finished cell equal in all of these is kept by --resume.
CELL_IDENTITY = (
    "family", "setting", "budget", "iterations", "meta_batch", "hparams", "image_size", "train", "test", "episodes"
)  # fmt: skip


def cell_record(job: Job, commit: str) -> dict[str, Any]:
    """The record of ``job`` before it runs: what it trains and tests, and at which commit."""
    cell = job.cell
    return {
        "family": cell.family,
        "setting": cell.setting,
        "budget": cell.budget,
        "paper": cell.paper,
        "cut": cell.cut(),
        "iterations": cell.iterations,
        "full_iterations": cell.full_iterations,
        "meta_batch": cell.meta_batch,
        "hparams": dataclasses.asdict(make_hparams(cell.family, cell.hparams)),
        "image_size": cell.image_size,
        "train": dataclasses.asdict(job.train),
        "test": dataclasses.asdict(job.test),
        "episodes": job.episodes,
        "commit": commit,
        "shared_with": None,
        "error": None,
    }


def finished_cells(out: Path, doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(family, setting) -> the finished cells of the previous run's JSON beside ``out``, if that run
    used the same datasets, test episodes and seed as ``doc``; empty when there is none."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    previous = read_json(path, "the previous table's data")
    now = _as_stored({"fingerprints": doc["dataset"]["fingerprints"], "test": doc["test"]})
    if previous.get("dataset", {}).get("fingerprints") != now["fingerprints"] or previous.get("test") != now["test"]:
        return {}
    return {
        (cell["family"], cell["setting"]): {"commit": previous["commit"], **cell}
        for cell in previous.get("cells", [])
        if cell.get("error") is None
    }


def same_cell(kept: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether a kept cell ran exactly what ``planned`` would."""
    planned = _as_stored({key: planned[key] for key in CELL_IDENTITY})
    return all(kept.get(key) == value for key, value in planned.items())


def _as_stored(data: Any) -> Any:
    """``data`` as it reads back from the JSON file (string keys, lists for tuples)."""
    return json.loads(json.dumps(data))
