"""The typed stage records: what search, evaluate and register write is read back field for field,
and a file of another format version or with a field missing or mistyped is one line naming the
file and the field. Plain files in a temporary directory; no Ray, no MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation_record import EvaluationRecord
from pipeline.io import write_json_atomic
from pipeline.records import (
    FORMAT_VERSION,
    DatasetRef,
    Evaluation,
    EvaluationEpisodes,
    MlflowRef,
    RegisteredVersion,
    ScoredModel,
    SearchResult,
    SettingScore,
    TrialRecord,
    ValEpisodes,
    VersionTags,
    read_record,
)

MLFLOW = MlflowRef(tracking_uri="sqlite:///mlflow.db", experiment_id="1", parent_run_id="parent")
DATASET = DatasetRef(dir="runs/datasets/x", fingerprint="abc123")


def trial(trial_id: str, val_accuracy: float | None, error: str | None = None) -> TrialRecord:
    return TrialRecord(
        trial_id=trial_id, index=0, run_id=f"run-{trial_id}", family="protonet", params={"width": 16},
        hparams={"width": 16, "lr": 0.001}, val_accuracy=val_accuracy, best_iteration=20, iterations=40,
        checkpoint=None if error else f"s3://bucket/{trial_id}/checkpoint_000001", final_checkpoint=None,
        error=error, failed_attempts=1 if error else 0, node_id="node", device="cpu",
    )  # fmt: skip


def search_result() -> SearchResult:
    return SearchResult(
        experiment="x",
        experiment_dir="runs/tune/x",
        metric="val_accuracy",
        dataset=DATASET,
        val_episodes=ValEpisodes(ways=5, shots=1, query=15, episodes=100, seed=0),
        mlflow=MLFLOW,
        trials=[trial("a", 0.9), trial("b", None, error="ValueError: loss is NaN")],
    )


def evaluation() -> Evaluation:
    model = ScoredModel.of(trial("a", 0.9), False, {"5w1s": SettingScore(5, 1, 600, 0.87, 0.01)}, seconds=3.5)
    return Evaluation(
        experiment="x",
        dataset=DATASET,
        test_episodes=EvaluationEpisodes(query=15, episodes=600, seed=0),
        primary="5w1s",
        mlflow=MLFLOW,
        models=[model],
        selection="the best validation accuracy",
        winner="a",
    )


def test_records_read_back_equal_with_their_format_version_on_disk(tmp_path):
    for record, name in ((search_result(), "search_result.json"), (evaluation(), "evaluation.json")):
        write_json_atomic(tmp_path / name, record.to_json())
        on_disk = json.loads((tmp_path / name).read_text())
        assert on_disk["format_version"] == FORMAT_VERSION
        assert read_record(type(record), tmp_path / name, "") == record
    assert evaluation().winning_model().results["5w1s"].accuracy == 0.87
    assert [t.evaluable for t in search_result().trials] == [True, False]


def test_a_file_from_before_the_version_field_reads_as_version_1(tmp_path):
    old = evaluation().to_json()
    del old["format_version"], old["untrained"], old["complete"]
    for model in old["models"]:
        del model["untrained"], model["seconds"]
    (tmp_path / "evaluation.json").write_text(json.dumps(old))
    read = read_record(Evaluation, tmp_path / "evaluation.json", "")
    assert read.complete and read.untrained == [] and read.models[0].seconds is None
    assert read.winning_model().trial_id == "a"


def _one_line(kind: type, path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError) as error:
        read_record(kind, path, "")
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_format_version_is_one_line_naming_the_file(tmp_path):
    data = {**search_result().to_json(), "format_version": 2}
    message = _one_line(SearchResult, tmp_path / "search_result.json", data)
    assert message == (
        f"{tmp_path}/search_result.json: format_version 2 is not one this learn2tune reads (1); "
        "it was written by another version of learn2tune"
    )


def test_missing_field_is_one_line_naming_the_file_and_the_field(tmp_path):
    data = search_result().to_json()
    del data["trials"][1]["checkpoint"]
    message = _one_line(SearchResult, tmp_path / "search_result.json", data)
    assert message == f"{tmp_path}/search_result.json: field trials[1].checkpoint is missing"


def test_mistyped_field_is_one_line_naming_the_field(tmp_path):
    data = evaluation().to_json()
    data["models"][0]["results"]["5w1s"]["accuracy"] = "high"
    message = _one_line(Evaluation, tmp_path / "evaluation.json", data)
    assert message.startswith(f"{tmp_path}/evaluation.json: field models[0].results.5w1s.accuracy is invalid: ")


def test_an_earlier_evaluation_of_another_version_is_an_error_not_overwritten(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({**evaluation().to_json(), "format_version": 3}))
    before = path.read_bytes()
    with pytest.raises(PipelineError, match="format_version 3 is not one this learn2tune reads"):
        EvaluationRecord(path, evaluation())
    assert path.read_bytes() == before


def test_an_earlier_evaluation_on_the_same_episodes_keeps_its_scores(tmp_path):
    path = tmp_path / "evaluation.json"
    write_json_atomic(path, evaluation().to_json())
    kept = EvaluationRecord(path, evaluation())
    assert kept.kept == 1 and kept.earlier_results(evaluation().models[0].key)["5w1s"].ci95 == 0.01
    other = dataclasses.replace(evaluation(), test_episodes=EvaluationEpisodes(query=15, episodes=1000, seed=0))
    assert EvaluationRecord(path, other).kept == 0


def test_version_tags_round_trip_through_mlflow_strings_and_name_the_missing_ones():
    tags = VersionTags(
        family="protonet", trial_id="a", experiment="x", dataset_fingerprint="abc123", ways=5, shots=1,
        test_accuracy=0.87834, test_ci95=0.0062, test_episodes=600, val_accuracy=0.9, selection="best val",
    )  # fmt: skip
    strings = tags.to_tags()
    assert strings["test_accuracy"] == "0.8783" and strings["ways"] == "5" and strings["val_accuracy"] == "0.9000"
    version = RegisteredVersion.from_tags("glyphs", 3, strings)
    assert version.number == "3" and version.tags.ways == 5 and version.tags.test_accuracy == 0.8783
    assert version.model_uri() == "models:/glyphs/3" and version.model_uri("champion") == "models:/glyphs@champion"
    with pytest.raises(PipelineError) as error:
        RegisteredVersion.from_tags("glyphs", 3, {k: v for k, v in strings.items() if k not in ("ways", "shots")})
    assert str(error.value) == (
        "model glyphs version 3 lacks the tag(s) ways, shots; only versions registered by `learn2tune register` "
        "can be promoted"
    )
