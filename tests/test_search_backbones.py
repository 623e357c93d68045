"""A search over two families and both backbones, run to completion with real Ray and MLflow (SQLite).

Slow (~1 min on 2 cores: three Ray trials): `pytest -m slow tests/test_search_backbones.py`.
"""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main

CONFIG = """\
name: backbones
seed: 0
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 8, val_classes: 5, test_classes: 5}}
episodes:
  train: {{ways: 5, shots: 1, query: 2}}
  meta_batch: 2
  val: {{episodes: 4}}
  test: {{ways: [5], shots: [1], query: 2, episodes: 4}}
search:
  families: [protonet, fomaml]
  backbones: [conv4, resnet12]
  trials: 3
  max_iterations: 4
  grace_iterations: 2
  eval_every: 2
  checkpoint_every: 2
  fixed: {{protonet: {{width: 4, train_ways: 0}}, fomaml: {{width: 4, path: split, test_inner_steps: 1}}}}
  # the queued first trial of each family: protonet on ResNet-12, FOMAML on Conv-4
  points_to_evaluate: {{protonet: {{backbone: resnet12}}, fomaml: {{backbone: conv4}}}}
"""


@pytest.mark.slow
def test_a_search_over_families_and_backbones_runs_to_completion_with_nested_runs(tmp_path, pipeline_ray):
    from mlflow import MlflowClient

    (tmp_path / "search.yaml").write_text(CONFIG.format(root=tmp_path))
    assert main(["build", str(tmp_path / "search.yaml")]) == 0
    assert main(["search", str(tmp_path / "search.yaml")]) == 0
    result = json.loads((tmp_path / "runs/tune/backbones/search_result.json").read_text())
    trials = result["trials"]
    assert len(trials) == 3 and all(t["error"] is None and t["val_accuracy"] is not None for t in trials)
    assert {(t["family"], t["hparams"]["backbone"]) for t in trials} >= {("protonet", "resnet12"), ("fomaml", "conv4")}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    parent_id, experiment_id = result["mlflow"]["parent_run_id"], result["mlflow"]["experiment_id"]
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_id for c in children) == sorted(t["run_id"] for t in trials)
    assert all(c.info.status == "FINISHED" for c in children)
