"""End to end: `learn2tune run` on tiny synthetic glyphs with real Ray, MLflow (SQLite) and Parquet.

One run (two short trials) in a module fixture; each test checks one thing it left behind.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main

CONFIG = """\
name: e2e
seed: 0
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 40, synthetic_images_per_class: 12}}
episodes:
  train: {{ways: 5, shots: 1, query: 5}}
  meta_batch: 4
  val: {{episodes: 20}}
  test: {{ways: [5, 3], shots: [1], query: 5, episodes: 60}}
search:
  families: [protonet, maml]
  trials: 2
  max_iterations: 40
  grace_iterations: 20
  eval_every: 20
  checkpoint_every: 20
  fixed: {{protonet: {{width: 16, train_ways: 0}}, maml: {{width: 16, path: loop, test_inner_steps: 3}}}}
registry: {{top_k: 2}}
"""


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, pipeline_ray):
    """The directory of a finished `learn2tune run`, its MLflow client and its evaluation."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("e2e")
    (root / "e2e.yaml").write_text(CONFIG.format(root=root))
    assert main(["run", str(root / "e2e.yaml")]) == 0
    uri = f"sqlite:///{root}/mlflow.db"
    evaluation = json.loads((root / "runs/tune/e2e/evaluation.json").read_text())
    return root, MlflowClient(tracking_uri=uri, registry_uri=uri), evaluation


def test_dataset_is_parquet_with_a_manifest(pipeline_run):
    root, _, _ = pipeline_run
    names = {p.name for p in (root / "runs/datasets/e2e").iterdir()}
    assert names == {"manifest.json", "train.parquet", "val.parquet", "test.parquet"}


def test_parent_run_has_one_nested_child_run_per_trial_with_curves_and_artifacts(pipeline_run):
    _, client, evaluation = pipeline_run
    parent_id = evaluation["mlflow"]["parent_run_id"]
    experiment_id = evaluation["mlflow"]["experiment_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 2
    assert {child.data.params["family"] for child in children} == {"protonet", "maml"}  # each family tried
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["family"] in ("protonet", "maml")
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] in ([20], [20, 40])
        assert len(client.get_metric_history(child.info.run_id, "loss")) == len(history)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"learning_curve.png", "trial.json", "checkpoint"} <= artifacts


def test_parent_run_holds_the_dataset_build_report(pipeline_run, tmp_path):
    root, client, evaluation = pipeline_run
    path = client.download_artifacts(evaluation["mlflow"]["parent_run_id"], "dataset_report.json", str(tmp_path))
    report = json.loads(Path(path).read_text())
    manifest = json.loads((root / "runs/datasets/e2e/manifest.json").read_text())
    assert report == {"fingerprint": manifest["fingerprint"], **manifest["report"]}
    assert report["channels"] == 1 and report["images_stored"] == 40 * 12 and evaluation["complete"] is True


def test_evaluation_metrics_with_ci_are_on_the_parent_and_trial_runs(pipeline_run):
    _, client, evaluation = pipeline_run
    metrics = client.get_run(evaluation["mlflow"]["parent_run_id"]).data.metrics
    assert 0.0 <= metrics["test_acc_5w1s"] <= 1.0 and metrics["test_ci95_5w1s"] > 0.0
    for model in evaluation["models"]:
        trial_metrics = client.get_run(model["run_id"]).data.metrics
        assert trial_metrics["test_acc_5w1s"] == pytest.approx(model["results"]["5w1s"]["accuracy"])
        if model["family"] == "maml":  # a fixed 5-way head: 3-way episodes are skipped, not fatal
            assert "3w1s" not in model["results"]
        else:
            assert "test_acc_3w1s" in trial_metrics


def test_registered_version_has_alias_candidate_and_tags(pipeline_run):
    _, client, evaluation = pipeline_run
    version = client.get_model_version_by_alias("e2e", "candidate")
    winner = next(m for m in evaluation["models"] if m["trial_id"] == evaluation["winner"])
    assert version.tags["family"] == winner["family"]
    assert version.tags["dataset_fingerprint"] == evaluation["dataset"]["fingerprint"]
    assert (version.tags["ways"], version.tags["shots"]) == ("5", "1")
    assert float(version.tags["test_accuracy"]) == pytest.approx(winner["results"]["5w1s"]["accuracy"], abs=1e-4)
    assert float(version.tags["test_ci95"]) > 0.0


def test_served_model_predicts_a_real_test_episode_well_above_chance(pipeline_run):
    import mlflow

    from tasks.store import DatasetStore

    root, _, _ = pipeline_run
    split = DatasetStore.open(root / "runs/datasets/e2e").split("test")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/e2e@candidate")
    rng = np.random.default_rng(1)
    correct = total = 0
    for _ in range(4):
        frame, truth = _request(split, rng, ways=5, shots=1, query=5)
        predictions = model.predict(frame)
        assert len(predictions) == len(truth)
        for label, probabilities in zip(predictions["label"], predictions["probabilities"], strict=True):
            assert set(probabilities) == set(truth) and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
            assert label == max(probabilities, key=probabilities.get)
        correct += int((predictions["label"].to_numpy() == np.array(truth)).sum())
        total += len(truth)
    assert correct / total > 0.4, f"accuracy {correct / total:.2f} (chance 0.2)"


def _request(split, rng: np.random.Generator, ways: int, shots: int, query: int) -> tuple[pd.DataFrame, list[str]]:
    """One request: support images as base64 PNGs, queries as nested lists (both forms served)."""
    rows, truth = [], []
    for c in rng.choice(split.num_classes, size=ways, replace=False):
        images = split.class_images(int(c))[rng.permutation(len(split.class_images(int(c))))[: shots + query]]
        name = split.class_names[int(c)]
        for image in images[:shots]:
            buffer = io.BytesIO()
            Image.fromarray(image[0]).save(buffer, format="PNG")
            rows.append({"role": "support", "label": name, "image": base64.b64encode(buffer.getvalue()).decode()})
        for image in images[shots:]:
            rows.append({"role": "query", "label": None, "image": image[0].tolist()})
            truth.append(name)
    return pd.DataFrame(rows), truth
