"""``evaluate --on`` and ``report cross-domain`` with a real Ray, MLflow (SQLite) and Parquet.

One tiny search (one ProtoNet trial) on 28x28 grey synthetic glyphs, evaluated in-domain, then on
a second synthetic dataset built at 36x36 in colour: the target's images must be converted.
"""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main

CONFIG = """\
name: src
seed: 1
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 40, synthetic_images_per_class: 8}}
episodes:
  train: {{ways: 5, shots: 1, query: 5}}
  meta_batch: 2
  val: {{episodes: 5}}
  test: {{ways: [5], shots: [1], query: 5, episodes: 20}}
search:
  families: [protonet]
  trials: 1
  max_iterations: 10
  grace_iterations: 10
  eval_every: 10
  checkpoint_every: 10
  fixed:
    protonet: {{width: 8, train_ways: 0}}
"""


@pytest.fixture(scope="module")
def crossed(tmp_path_factory, pipeline_ray):
    """(root, MLflow client, the output of `evaluate --on`) after a search on one dataset."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("xdomain")
    config = root / "src.yaml"
    config.write_text(CONFIG.format(root=root))
    target = root / "colour36"
    build = ["build", str(config), "--out", str(target), "--set", "data.image_size=36", "--set", "data.channels=3"]
    assert main([*build, "--set", "data.seed=9"]) == 0
    for command in ("build", "search", "evaluate"):
        assert main([command, str(config)]) == 0
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["evaluate", str(config), "--on", str(target)]) == 0
    uri = f"sqlite:///{root}/mlflow.db"
    return root, MlflowClient(tracking_uri=uri), printed.getvalue()


def test_evaluate_on_says_how_the_target_images_are_converted(crossed):
    _, _, printed = crossed
    assert "target colour36: 36x36 colour -> 28x28 grey: resized, converted to grey" in printed


def test_scores_fingerprint_and_input_are_on_the_trial_and_parent_runs(crossed):
    root, client, _ = crossed
    search = json.loads((root / "runs/tune/src/search_result.json").read_text())
    fingerprint = json.loads((root / "colour36/manifest.json").read_text())["fingerprint"]
    for run_id in (search["mlflow"]["parent_run_id"], search["trials"][0]["run_id"]):
        run = client.get_run(run_id)
        accuracy = run.data.metrics["test_acc_colour36_5w1s"]
        assert 0.0 <= accuracy <= 1.0 and run.data.metrics["test_ci95_colour36_5w1s"] > 0
        assert run.data.tags["learn2tune.cross_domain.colour36.fingerprint"] == fingerprint
        names = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
        assert names["colour36.test"] == fingerprint[:12]


def test_record_file_holds_each_models_scores_on_the_target(crossed):
    root, client, _ = crossed
    record = json.loads((root / "runs/tune/src/cross_domain/colour36.json").read_text())
    assert record["complete"] and record["dataset"]["fingerprint"] != ""
    (model,) = record["models"]
    result = model["results"]["5w1s"]
    assert result["episodes"] == 20
    run = client.get_run(model["run_id"])
    assert run.data.metrics["test_acc_colour36_5w1s"] == pytest.approx(result["accuracy"], rel=1e-6)


def test_report_tabulates_in_domain_beside_the_target(crossed, tmp_path):
    root, _, _ = crossed
    out = tmp_path / "table.md"
    assert main(["report", "cross-domain", str(root / "src.yaml"), "--experiments", "src", "--out", str(out)]) == 0
    text = out.read_text()
    evaluation = json.loads((root / "runs/tune/src/evaluation.json").read_text())
    in_domain = evaluation["models"][0]["results"]["5w1s"]
    record = json.loads((root / "runs/tune/src/cross_domain/colour36.json").read_text())
    target = record["models"][0]["results"]["5w1s"]
    source = evaluation["dataset"]["dir"].rstrip("/").rsplit("/", 1)[-1]
    assert f"| {source} 5w1s | colour36 5w1s |" in text
    assert f"| protonet | {source} | **{in_domain['accuracy']:.4f} ± {in_domain['ci95']:.4f}** |" in text
    assert f"{target['accuracy']:.4f} ± {target['ci95']:.4f}" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert rows[0]["scores"]["colour36 5w1s"][0] == pytest.approx(target["accuracy"])


def test_a_missing_target_and_a_directory_that_is_no_dataset_are_one_line_errors(crossed, tmp_path, capsys):
    root, _, _ = crossed
    config = str(root / "src.yaml")
    assert main(["evaluate", config, "--on", str(tmp_path / "nowhere")]) == 2
    assert "neither an experiment with a finished search" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["evaluate", config, "--on", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "is not a built dataset" in err and len(err.strip().splitlines()) == 1


def test_the_source_dataset_itself_is_refused(crossed, capsys):
    root, _, _ = crossed
    assert main(["evaluate", str(root / "src.yaml"), "--on", "src"]) == 2
    assert "that is the dataset experiment 'src' was searched on" in capsys.readouterr().err
