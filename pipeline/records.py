"""Typed records of what the stages pass on: search -> evaluate -> register -> promote.

``search_result.json`` (:class:`SearchResult`, one :class:`TrialRecord` per trial) and
``evaluation.json`` (:class:`Evaluation`, one :class:`ScoredModel` per model) stay plain,
indented JSON with a ``format_version``. Reading one checks the version and every field:
an unknown version or a missing or mistyped field is one line naming the file and the field.
Files written before the version field existed hold version 1's fields and read as version 1.
A :class:`RegisteredVersion` is a model version with the :class:`VersionTags` register gave it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from pipeline.errors import PipelineError
from pipeline.io import read_json
from tasks.storage import Location

FORMAT_VERSION = 1
VERSION_FIELD = "format_version"

Record = TypeVar("Record")


@dataclass(frozen=True)
class DatasetRef:
    """The dataset a search ran on."""

    dir: str
    fingerprint: str


@dataclass(frozen=True)
class MlflowRef:
    """Where the search is tracked: its store, experiment and parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class ValEpisodes:
    """The validation episodes every trial was ranked on."""

    ways: int
    shots: int
    query: int
    episodes: int
    seed: int


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search; checkpoints as local paths or storage URIs."""

    trial_id: str
    index: int
    run_id: str | None
    family: str
    params: dict[str, Any]  # searched and fixed; hparams adds the family's defaults
    hparams: dict[str, Any]
    val_accuracy: float | None
    best_iteration: int | None
    iterations: int
    checkpoint: str | None  # the best by validation accuracy
    final_checkpoint: str | None
    error: str | None
    failed_attempts: int
    # Where its last report came from (a restarted trial may have moved); None in older files.
    node_id: str | None = None
    device: str | None = None
    # max_iterations, asha or error (pipeline.trial_runs); None in older files
    stop_reason: str | None = None

    @property
    def evaluable(self) -> bool:
        """Finished without an error, with a checkpoint and an MLflow run to score it under."""
        return bool(self.checkpoint and self.run_id and self.val_accuracy is not None and not self.error)


@dataclass(frozen=True)
class SearchResult:
    """``search_result.json``: every trial of a finished search, best first."""

    experiment: str
    experiment_dir: str
    metric: str
    dataset: DatasetRef
    val_episodes: ValEpisodes
    mlflow: MlflowRef
    trials: list[TrialRecord]

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class SettingScore:
    """A model's accuracy on one (ways, shots) test setting."""

    ways: int
    shots: int
    episodes: int
    accuracy: float
    ci95: float


@dataclass(frozen=True)
class ScoredModel:
    """One evaluated model: a trial's best checkpoint, or (``untrained``) the network it started from."""

    trial_id: str
    run_id: str
    family: str
    params: dict[str, Any]
    hparams: dict[str, Any]
    val_accuracy: float
    best_iteration: int | None
    checkpoint: str
    results: dict[str, SettingScore]  # by setting key, e.g. "5w1s"; a setting the model cannot score is absent
    untrained: bool = False
    seconds: float | None = None  # scoring time; None when an earlier evaluate scored it

    @classmethod
    def of(
        cls, trial: TrialRecord, untrained: bool, results: dict[str, SettingScore], seconds: float | None
    ) -> ScoredModel:
        if trial.run_id is None or trial.checkpoint is None or trial.val_accuracy is None:
            raise ValueError(f"trial {trial.trial_id} has no checkpoint, run or validation accuracy to score")
        return cls(
            trial_id=trial.trial_id,
            run_id=trial.run_id,
            family=trial.family,
            params=trial.params,
            hparams=trial.hparams,
            val_accuracy=trial.val_accuracy,
            best_iteration=trial.best_iteration,
            checkpoint=trial.checkpoint,
            results=results,
            untrained=untrained,
            seconds=seconds,
        )

    @property
    def key(self) -> tuple[str, str, bool]:
        """What identifies a scored model: its trial, checkpoint, and whether it is the untrained network."""
        return (self.trial_id, self.checkpoint, self.untrained)


@dataclass(frozen=True)
class EvaluationEpisodes:
    """The test episodes of an evaluation (settings aside): the same for every model scored."""

    query: int
    episodes: int
    seed: int


@dataclass(frozen=True)
class Evaluation:
    """``evaluation.json``: the models scored so far; ``complete`` with a winner once all are."""

    experiment: str
    dataset: DatasetRef
    test_episodes: EvaluationEpisodes
    primary: str  # the setting key the winner must score, e.g. "5w1s"
    mlflow: MlflowRef
    models: list[ScoredModel] = field(default_factory=list)
    untrained: list[ScoredModel] = field(default_factory=list)
    complete: bool = True
    selection: str | None = None  # how the winner was chosen
    winner: str | None = None  # its trial id

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @property
    def protocol(self) -> tuple[str, EvaluationEpisodes]:
        """What makes two evaluations' episodes the same: the dataset and the test episode settings."""
        return (self.dataset.fingerprint, self.test_episodes)

    def winning_model(self) -> ScoredModel:
        """The winner's scores (a complete evaluation has one)."""
        found = next((m for m in self.models if m.trial_id == self.winner), None)
        if found is None:
            raise PipelineError(f"the evaluation of {self.experiment!r} names no winner among its models")
        return found


TAG_FORMATS = {"test_accuracy": "{:.4f}", "test_ci95": "{:.4f}", "val_accuracy": "{:.4f}"}


@dataclass(frozen=True)
class VersionTags:
    """What ``learn2tune register`` tags a model version with: what it is and how it scored."""

    family: str
    trial_id: str
    experiment: str
    dataset_fingerprint: str
    ways: int  # the primary setting
    shots: int
    test_accuracy: float
    test_ci95: float
    test_episodes: int
    val_accuracy: float
    selection: str

    def to_tags(self) -> dict[str, str]:
        """MLflow tag values (accuracies to 4 decimals)."""
        return {k: TAG_FORMATS.get(k, "{}").format(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class RegisteredVersion:
    """A version of a registered model and the tags ``learn2tune register`` gave it."""

    name: str
    number: str  # MLflow returns it as int or str
    tags: VersionTags

    @classmethod
    def from_tags(cls, name: str, version: str | int, tags: Mapping[str, str]) -> RegisteredVersion:
        """The record of a version from its MLflow tags; a one-line error naming the tags it lacks."""
        names = [f.name for f in dataclasses.fields(VersionTags)]
        missing = [k for k in names if k not in tags]
        if missing:
            raise PipelineError(
                f"model {name} version {version} lacks the tag(s) {', '.join(missing)}; "
                "only versions registered by `learn2tune register` can be promoted"
            )
        typed = _validate(VersionTags, {k: tags[k] for k in names}, f"model {name} version {version}'s tags")
        return cls(name, str(version), typed)

    def model_uri(self, alias: str | None = None) -> str:
        """``models:/NAME@ALIAS`` with ``alias``, else ``models:/NAME/VERSION``."""
        return f"models:/{self.name}@{alias}" if alias else f"models:/{self.name}/{self.number}"


def to_json(record: SearchResult | Evaluation) -> dict[str, Any]:
    """``record`` as JSON-ready dicts, with the format version first."""
    return {VERSION_FIELD: FORMAT_VERSION, **dataclasses.asdict(record)}


def read_record(kind: type[Record], path: Path | Location, missing_hint: str) -> Record:
    """The ``kind`` record in the JSON file ``path``: version and every field checked."""
    data = read_json(path, missing_hint)
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is not a {kind.__name__} record (expected a JSON object)")
    version = data.pop(VERSION_FIELD, FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: {VERSION_FIELD} {version!r} is not one this learn2tune reads ({FORMAT_VERSION}); "
            "it was written by another version of learn2tune"
        )
    return _validate(kind, data, str(path))


def _validate(kind: type[Record], data: dict[str, Any], source: str) -> Record:
    try:
        return pydantic.TypeAdapter(kind).validate_python(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
        message = first["msg"][:1].lower() + first["msg"][1:]
        problem = "is missing" if first["type"] == "missing" else f"is invalid: {message}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PipelineError(f"{source}: field {where} {problem}{more}") from None
