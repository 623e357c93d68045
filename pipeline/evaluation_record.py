"""``evaluation.json`` kept up to date model by model, so an interrupted evaluate loses nothing.

The record is rewritten atomically after every model (``complete: false``, no winner yet) and
once more at the end. A new evaluate of the same experiment on the same test episodes (same
dataset, query, episode count and seed) keeps every (model, setting) score the record already
holds and scores only the rest; a record made on other episodes is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import write_json_atomic
from tasks.storage import Location


def model_key(model: dict[str, Any]) -> tuple[str, str, bool]:
    """What identifies a scored model: its trial, checkpoint, and whether it is the untrained network."""
    return (model["trial_id"], model["checkpoint"], bool(model.get("untrained")))


class EvaluationRecord:
    """The models scored so far on one test protocol, written to ``path`` after each one."""

    def __init__(self, path: Path | Location, head: dict[str, Any]) -> None:
        self.path, self.head = path, head
        self.models: list[dict[str, Any]] = []
        self._earlier = {model_key(m): m for m in _earlier_models(path, head)}

    @property
    def kept(self) -> int:
        """How many models the earlier record held for this protocol."""
        return len(self._earlier)

    def earlier_results(self, key: tuple[str, str, bool]) -> dict[str, Any]:
        """The setting -> result scores an earlier run left for ``key`` (empty when none)."""
        model = self._earlier.get(key)
        return dict(model["results"]) if model else {}

    def earlier_seconds(self) -> list[float]:
        """How long each model the earlier record holds took to score (for the slow-model warning)."""
        return [m["seconds"] for m in self._earlier.values() if m.get("seconds")]

    def add(self, model: dict[str, Any]) -> None:
        """Record one finished model and rewrite the file (atomically)."""
        self.models.append(model)
        self._write({"complete": False})

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write the complete evaluation (``summary`` adds the winner); returns it."""
        return self._write({**summary, "complete": True})

    def _write(self, extra: dict[str, Any]) -> dict[str, Any]:
        trained = [m for m in self.models if not m.get("untrained")]
        untrained = [m for m in self.models if m.get("untrained")]
        record = {**self.head, **extra, "models": trained, "untrained": untrained}
        write_json_atomic(self.path, record)
        return record


def protocol(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two evaluations' episodes the same: the dataset and the test episode settings."""
    return (record["dataset"]["fingerprint"], json.dumps(record["test_episodes"], sort_keys=True))


def check_complete(record: dict[str, Any], path: Path | Location) -> dict[str, Any]:
    """``record`` if it is a finished evaluation; a one-line error naming what is missing otherwise."""
    if record.get("complete", True):
        return record
    scored = len(record.get("models", []))
    raise PipelineError(
        f"{path} is an unfinished evaluation ({scored} model(s) scored before it stopped); "
        "run `learn2tune evaluate` again to finish it (models already scored are kept)"
    )


def _earlier_models(path: Path | Location, head: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        record = json.loads(path.read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    same = (
        isinstance(record, dict)
        and record.get("mlflow", {}).get("parent_run_id") == head["mlflow"]["parent_run_id"]
        and "dataset" in record
        and "test_episodes" in record
        and protocol(record) == protocol(head)
    )
    return [*record.get("models", []), *record.get("untrained", [])] if same else []
