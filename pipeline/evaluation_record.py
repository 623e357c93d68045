"""``evaluation.json`` kept up to date model by model, so an interrupted evaluate loses nothing.

The record is rewritten atomically after every model (``complete: false``, no winner yet) and
once more at the end. A new evaluate of the same experiment on the same test episodes (same
dataset, query, episode count and seed) keeps every (model, setting) score the record already
holds and scores only the rest; a record made on other episodes is replaced. An earlier record
this learn2tune cannot read (another format version, a missing field) is an error, not replaced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_json_atomic
from pipeline.records import Evaluation, ScoredModel, SettingScore, read_record
from tasks.storage import Location


class EvaluationRecord:
    """The models scored so far on one test protocol, written to ``path`` after each one."""

    def __init__(self, path: Path | Location, head: Evaluation) -> None:
        """``head``: the evaluation's experiment, dataset, episodes and MLflow run (its models are ignored)."""
        self.path, self.head = path, head
        self.models: list[ScoredModel] = []
        self._earlier = {m.key: m for m in _earlier_models(path, head)}

    @property
    def kept(self) -> int:
        """How many models the earlier record held for this protocol."""
        return len(self._earlier)

    def earlier_results(self, key: tuple[str, str, bool]) -> dict[str, SettingScore]:
        """The setting -> score an earlier run left for ``key`` (empty when none)."""
        model = self._earlier.get(key)
        return dict(model.results) if model else {}

    def earlier_seconds(self) -> list[float]:
        """How long each model the earlier record holds took to score (for the slow-model warning)."""
        return [m.seconds for m in self._earlier.values() if m.seconds]

    def add(self, model: ScoredModel) -> None:
        """Record one finished model and rewrite the file (atomically)."""
        self.models.append(model)
        self._write(complete=False)

    def finish(self, selection: str, winner: str) -> Evaluation:
        """Write the complete evaluation with its winner (a trial id) and how it was chosen; returns it."""
        return self._write(complete=True, selection=selection, winner=winner)

    def _write(self, complete: bool, selection: str | None = None, winner: str | None = None) -> Evaluation:
        evaluation = dataclasses.replace(
            self.head,
            models=[m for m in self.models if not m.untrained],
            untrained=[m for m in self.models if m.untrained],
            complete=complete,
            selection=selection,
            winner=winner,
        )
        write_json_atomic(self.path, evaluation.to_json())
        return evaluation


def check_complete(evaluation: Evaluation, path: Path | Location) -> Evaluation:
    """``evaluation`` if it is finished; a one-line error naming what is missing otherwise."""
    if evaluation.complete:
        return evaluation
    raise PipelineError(
        f"{path} is an unfinished evaluation ({len(evaluation.models)} model(s) scored before it stopped); "
        "run `learn2tune evaluate` again to finish it (models already scored are kept)"
    )


def _earlier_models(path: Path | Location, head: Evaluation) -> list[ScoredModel]:
    if not path.exists():
        return []
    earlier = read_record(Evaluation, path, "")
    same = earlier.mlflow.parent_run_id == head.mlflow.parent_run_id and earlier.protocol == head.protocol
    return [*earlier.models, *earlier.untrained] if same else []
