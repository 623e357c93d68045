"""End to end: `learn2tune run` on tiny synthetic glyphs with real Ray, MLflow (SQLite) and Parquet.

One run (two short trials) in a module fixture; each test checks one thing it left behind.
The trials run one after the other: a ProtoNet that learns, then a MAML whose learning rates
are fixed near zero (it stays at chance), so ASHA stops the MAML at its rung (20 of 40).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main

CONFIG = """\
name: e2e
seed: 2  # the sampler draws protonet first
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
  max_concurrent: 1
  fixed:
    protonet: {{width: 16, train_ways: 0}}
    maml: {{width: 16, path: loop, test_inner_steps: 3, inner_lr: 1.0e-9, meta_lr: 1.0e-9}}
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
        assert [m.step for m in history] == ([20, 40] if child.data.params["family"] == "protonet" else [20])
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


def _search_runs(pipeline_run) -> tuple[dict, dict]:
    """search_result.json and family -> its trial's MLflow run."""
    root, client, _ = pipeline_run
    result = json.loads((root / "runs/tune/e2e/search_result.json").read_text())
    return result, {t["family"]: client.get_run(t["run_id"]) for t in result["trials"]}


def test_each_trial_run_ends_when_its_trial_ends(pipeline_run):
    _, client, evaluation = pipeline_run
    _, runs = _search_runs(pipeline_run)
    for run in runs.values():
        history = [m for key in ("loss", "val_accuracy") for m in client.get_metric_history(run.info.run_id, key)]
        assert run.info.status == "FINISHED"
        assert 0 <= run.info.end_time - max(m.timestamp for m in history) < 5000, "ended long after its last report"
    parent = client.get_run(evaluation["mlflow"]["parent_run_id"])
    assert runs["protonet"].info.end_time <= runs["maml"].info.start_time < parent.info.end_time


def test_a_trial_asha_stopped_says_so_apart_from_one_that_ran_its_course(pipeline_run):
    result, runs = _search_runs(pipeline_run)
    stopped, full = runs["maml"].data.tags, runs["protonet"].data.tags
    assert stopped["learn2tune.stop_reason"] == "asha"
    assert stopped["mlflow.note.content"].startswith("stopped early by ASHA at 20 of 40 iterations")
    assert full["learn2tune.stop_reason"] == "max_iterations"
    assert full["mlflow.note.content"].startswith("reached the maximum of 40 iterations")
    assert {t["family"]: t["stop_reason"] for t in result["trials"]} == {"maml": "asha", "protonet": "max_iterations"}


def test_val_accuracy_best_is_the_figure_the_ranking_used(pipeline_run):
    result, runs = _search_runs(pipeline_run)
    for trial in result["trials"]:
        metrics = runs[trial["family"]].data.metrics
        assert metrics["val_accuracy_best"] == pytest.approx(trial["val_accuracy"])
        assert metrics["val_accuracy_best"] >= metrics["val_accuracy"]


def test_parent_and_trial_runs_have_the_dataset_splits_as_inputs(pipeline_run):
    root, client, evaluation = pipeline_run
    _, runs = _search_runs(pipeline_run)
    manifest = json.loads((root / "runs/datasets/e2e/manifest.json").read_text())
    assert {m["run_id"] for m in evaluation["models"]} == {run.info.run_id for run in runs.values()}
    for run in [client.get_run(evaluation["mlflow"]["parent_run_id"]), *runs.values()]:
        inputs = {
            next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
            for i in run.inputs.dataset_inputs
        }
        assert set(inputs) == {"train", "validation", "test"}  # test: logged by evaluate (both trials were scored)
        for context, split in (("train", "train"), ("validation", "val"), ("test", "test")):
            dataset = inputs[context]
            assert dataset.name == f"e2e.{split}" and dataset.digest == manifest["fingerprint"][:12]
            assert json.loads(dataset.source)["uri"] == (root / f"runs/datasets/e2e/{split}.parquet").as_uri()
            profile = json.loads(dataset.profile)
            assert profile["num_rows"] == manifest["splits"][split]["images"]
            assert profile["fingerprint"] == manifest["fingerprint"]
            assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["class", "class_name", "image"]


def test_runs_carry_where_they_came_from(pipeline_run):
    from pipeline.run_context import PROJECT_ROOT, git_tags

    _, client, evaluation = pipeline_run
    _, runs = _search_runs(pipeline_run)
    expected = git_tags(PROJECT_ROOT)
    for run in [client.get_run(evaluation["mlflow"]["parent_run_id"]), *runs.values()]:
        assert run.data.tags["mlflow.source.name"] == "learn2tune search" and run.data.tags["mlflow.user"]
        assert {key: run.data.tags.get(key) for key in expected} == expected


def test_registered_version_comes_from_a_logged_model_of_the_winning_trial_run(pipeline_run):
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    _, client, evaluation = pipeline_run
    version = client.get_model_version_by_alias("e2e", "candidate")
    winner = next(m for m in evaluation["models"] if m["trial_id"] == evaluation["winner"])
    assert version.source.startswith("models:/m-") and version.run_id == winner["run_id"]
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == winner["run_id"] and logged.status == LoggedModelStatus.READY
    run = client.get_run(winner["run_id"])
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]  # the run's Models column
    location = urlparse(client.get_model_version_download_uri("e2e", version.version))
    assert location.path.endswith(f"/models/{logged.model_id}/artifacts")  # the logged model's own files
    model = Model.load(location.path)
    assert model.model_id == logged.model_id and model.signature is not None


def test_system_metrics_are_logged_to_a_run_while_enabled(pipeline_run, monkeypatch):
    import time

    from pipeline.run_context import system_metrics

    root, client, evaluation = pipeline_run
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run_id = client.create_run(evaluation["mlflow"]["experiment_id"]).info.run_id
    with system_metrics(False, f"sqlite:///{root}/mlflow.db", run_id):
        time.sleep(0.5)
    assert client.get_run(run_id).data.metrics == {}
    with system_metrics(True, f"sqlite:///{root}/mlflow.db", run_id):
        time.sleep(1.0)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0.0 and metrics["system/system_memory_usage_megabytes"] > 0
    client.delete_run(run_id)


# --- the search and evaluation as a whole (pipeline/search_artifacts.py, pipeline/evaluation_artifacts.py) --


def _table(client, run_id: str, path: str, tmp_path: Path) -> pd.DataFrame:
    """A ``log_table`` artifact read back as MLflow writes it (pandas' split orientation)."""
    data = json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


def test_optuna_study_opens_from_its_storage_with_every_trial_and_its_best_value(pipeline_run):
    import optuna

    root, client, evaluation = pipeline_run
    tags = client.get_run(evaluation["mlflow"]["parent_run_id"]).data.tags
    assert tags["learn2tune.optuna_storage"] == f"sqlite:///{root}/runs/tune/e2e/optuna.db"
    study = optuna.load_study(study_name=tags["learn2tune.optuna_study"], storage=tags["learn2tune.optuna_storage"])
    result = json.loads((root / "runs/tune/e2e/search_result.json").read_text())
    by_number = {trial["index"]: trial for trial in result["trials"]}
    assert sorted(t.number for t in study.trials) == sorted(by_number) == [0, 1]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.params["family"] == by_number[trial.number]["family"]
        value = trial.value
        assert value == pytest.approx(by_number[trial.number]["val_accuracy"])  # the best, as ranked
        assert value is not None and value >= max(trial.intermediate_values.values(), default=value)


def test_parent_run_holds_the_trials_table_the_search_plots_and_a_copy_of_the_study(pipeline_run, tmp_path):
    import optuna

    root, client, evaluation = pipeline_run
    parent_id = evaluation["mlflow"]["parent_run_id"]
    paths = {a.path for d in ("search", "optuna") for a in client.list_artifacts(parent_id, d)}
    assert {"search/trials.json", "search/optimisation_history.png", "optuna/study.db"} <= paths
    table = _table(client, parent_id, "search/trials.json", tmp_path)
    result = json.loads((root / "runs/tune/e2e/search_result.json").read_text())
    assert list(table["trial_id"]) == [t["trial_id"] for t in result["trials"]]
    assert list(table["val_accuracy_best"]) == pytest.approx([t["val_accuracy"] for t in result["trials"]])
    statuses = {"asha": "ASHA stop", "max_iterations": "ok"}  # ASHA cuts maml at its first rung (the fixture)
    assert list(table["status"]) == [statuses[t["stop_reason"]] for t in result["trials"]]
    assert list(table["iterations"]) == [t["iterations"] for t in result["trials"]]
    for family, params in zip(table["family"], table["params"], strict=True):
        assert ("inner_lr=" in params) == (family == "maml")  # a trial carries its own family's knobs only
    copy = Path(client.download_artifacts(parent_id, "optuna/study.db", str(tmp_path)))
    (name,) = optuna.get_all_study_names(f"sqlite:///{copy}")
    assert len(optuna.load_study(study_name=name, storage=f"sqlite:///{copy}").trials) == 2
    # one trial per family: too few for an importance plot (it needs two of a family)
    assert not any(path.startswith("search/param_importance_") for path in paths)


def test_trial_runs_carry_only_their_own_familys_params(pipeline_run):
    from learners.registry import make_hparams

    _, client, evaluation = pipeline_run
    experiment_id, parent_id = evaluation["mlflow"]["experiment_id"], evaluation["mlflow"]["parent_run_id"]
    for child in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"):
        family = child.data.params["family"]
        own = set(dataclasses.asdict(make_hparams(family, {})))
        assert set(child.data.params) == {"family", "seed"} | own


def test_evaluate_logs_per_episode_tables_setting_plots_and_the_evaluation(pipeline_run, tmp_path):
    _, client, evaluation = pipeline_run
    for model in evaluation["models"]:
        table = _table(client, model["run_id"], "evaluation/episodes.json", tmp_path / model["trial_id"])
        assert sorted(set(table["setting"])) == sorted(model["results"])
        for setting, result in model["results"].items():
            rows = table[table["setting"] == setting]
            assert list(rows["episode"]) == list(range(60))
            assert rows["accuracy"].mean() == pytest.approx(result["accuracy"])
        plots = {a.path for a in client.list_artifacts(model["run_id"], "evaluation")}
        assert plots == {"evaluation/episodes.json", *(f"evaluation/{s}.png" for s in model["results"])}
    parent_id = evaluation["mlflow"]["parent_run_id"]
    logged = json.loads(Path(client.download_artifacts(parent_id, "evaluation.json", str(tmp_path))).read_text())
    assert logged == evaluation
    assert "evaluation/test_accuracy.png" in {a.path for a in client.list_artifacts(parent_id, "evaluation")}


def test_registered_version_records_its_parameters_weights_size_and_latency(pipeline_run):
    from learners.checkpoint import WEIGHTS_FILE, load_learner
    from pipeline.model_cost import ModelCost

    _, client, evaluation = pipeline_run
    cost = ModelCost.from_tags(client.get_model_version_by_alias("e2e", "candidate").tags)
    assert cost is not None
    checkpoint = Path(next(m for m in evaluation["models"] if m["trial_id"] == evaluation["winner"])["checkpoint"])
    learner, _ = load_learner(checkpoint)
    assert cost.params == sum(p.numel() for p in learner.parameters())
    assert cost.size_bytes == (checkpoint / WEIGHTS_FILE).stat().st_size
    assert 0.0 < cost.p50_ms <= cost.p95_ms < 10_000.0
    assert cost.calls >= 50
    assert cost.request == "5-way 5-shot + 75 queries (test split)"
    assert "cores" in cost.machine and "torch threads" in cost.machine


def test_promote_refuses_a_candidate_over_a_bound_with_one_line_and_promotes_one_within(pipeline_run, capsys):
    from pipeline.model_cost import TAGS

    root, client, _ = pipeline_run
    config = str(root / "e2e.yaml")
    version = client.get_model_version_by_alias("e2e", "candidate")
    p95, params = float(version.tags["latency.p95_ms"]), int(version.tags["model.params"])
    aliases = dict(client.get_registered_model("e2e").aliases)
    for flags, broken in (
        (["--max-latency-ms", f"{p95 / 2}"], f"breaks --max-latency-ms {p95 / 2:g}: its p95 is {p95:.2f} ms"),
        (["--max-params", str(params - 1)], f"breaks --max-params {params - 1}: it has {params:,} parameters"),
    ):
        capsys.readouterr()
        assert main(["promote", config, *flags]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"learn2tune: error: e2e version {version.version} {broken}")
        assert dict(client.get_registered_model("e2e").aliases) == aliases
        assert client.get_model_version("e2e", version.version).tags == version.tags

    for tag in TAGS.values():  # as registered before the figures were recorded: measured at promote
        client.delete_model_version_tag("e2e", version.version, tag)
    assert main(["promote", config, "--max-latency-ms", f"{p95 * 1000}", "--max-params", str(params)]) == 0
    assert "measuring it now" in capsys.readouterr().out
    promoted = client.get_model_version("e2e", version.version)
    assert client.get_model_version_by_alias("e2e", "champion").version == version.version
    assert int(promoted.tags["model.params"]) == params and float(promoted.tags["latency.p95_ms"]) > 0


def test_parent_run_holds_the_accuracy_latency_pareto_plot_and_points(pipeline_run, tmp_path):
    from pipeline.pareto import LATENCY_METRIC, PARETO_PLOT, PARETO_POINTS, pareto_front

    root, client, evaluation = pipeline_run
    parent_id = evaluation["mlflow"]["parent_run_id"]
    assert {PARETO_PLOT, PARETO_POINTS} <= {a.path for a in client.list_artifacts(parent_id, "search")}
    points = json.loads(Path(client.download_artifacts(parent_id, PARETO_POINTS, str(tmp_path))).read_text())["points"]
    result = json.loads((root / "runs/tune/e2e/search_result.json").read_text())
    with_checkpoint = {t["trial_id"]: t for t in result["trials"] if t["checkpoint"]}
    assert {p["trial_id"] for p in points} == set(with_checkpoint)
    front = pareto_front([(p["val_accuracy"], p["latency_ms"]) for p in points])
    assert front and [i for i, p in enumerate(points) if p["front"]] == front
    for point in points:
        trial = with_checkpoint[point["trial_id"]]
        assert point["val_accuracy"] == pytest.approx(trial["val_accuracy"])
        assert 5 <= point["calls"] <= 20
        assert client.get_run(trial["run_id"]).data.metrics[LATENCY_METRIC] == pytest.approx(point["latency_ms"])
