"""Promote and serve, for real: two registered models through the champion gate, then MLflow's
scoring server (`learn2tune serve`) on a free loopback port, called over HTTP.

The module fixture runs the pipeline twice on one synthetic-glyph dataset (a briefly trained
MAML, then a ProtoNet: versions 1 and 2 of one registered model) and once on another dataset
(version 3), promoting after each.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deploy.client import ServingError, encode_image, request_body
from deploy.local_server import free_port, local_server
from pipeline.cli import main
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes
from tasks.store import DatasetStore

MODEL = "glyphs"
CONFIG = """\
name: {name}
seed: 0
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 40, synthetic_images_per_class: 12, seed: {data_seed}, dir: "{root}/data-{data_seed}"}}
episodes:
  train: {{ways: 5, shots: 1, query: 5}}
  meta_batch: 4
  val: {{episodes: 20}}
  test: {{ways: [5], shots: [1], query: 5, episodes: 60}}
search:
  families: [{family}]
  trials: 1
  max_iterations: {iterations}
  grace_iterations: {iterations}
  eval_every: {iterations}
  checkpoint_every: {iterations}
  fixed: {{protonet: {{width: 16, train_ways: 0}}, maml: {{width: 16, path: loop, inner_steps: 1}}}}
registry: {{model_name: {model}, latency_calls: 5}}  # register times 5 calls: these tests are not about latency
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory, pipeline_ray):
    """Config paths and promote outputs of: maml v1 (first champion), protonet v2 (promoted),
    v1 again as candidate (kept out), and v3 on another dataset (refused)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("serve")

    def config(name: str, family: str, iterations: int, data_seed: int = 0) -> str:
        path = root / f"{name}.yaml"
        path.write_text(
            CONFIG.format(name=name, root=root, family=family, iterations=iterations, data_seed=data_seed, model=MODEL)
        )
        return str(path)

    maml, protonet, other = (
        config("maml", "maml", 10),
        config("protonet", "protonet", 40),
        config("other", "protonet", 10, 1),
    )
    steps = {}
    assert main(["run", maml]) == 0
    steps["first"] = _promote(protonet, [])  # any config of the same dataset and store will do
    assert main(["run", protonet]) == 0
    steps["second"] = _promote(protonet, [])
    steps["stale"] = _promote(protonet, ["--candidate", "1"])
    assert main(["run", other]) == 0
    steps["other_dataset"] = _promote(other, [])
    uri = f"sqlite:///{root}/mlflow.db"
    return {
        "root": root,
        "configs": {"maml": maml, "protonet": protonet, "other": other},
        "steps": steps,
        "client": MlflowClient(tracking_uri=uri, registry_uri=uri),
        "uri": uri,
    }


def _promote(config: str, extra: list[str]) -> tuple[int, str]:
    """Exit status and combined output of `learn2tune promote`, run in this process (a subprocess
    per call would import the stack again, ~5 s each)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = main(["promote", config, *extra])
    return status, output.getvalue()


def _cli() -> str:
    return str(Path(sys.executable).parent / "learn2tune")


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


# --- the champion gate -----------------------------------------------------------------------


def test_first_promotion_makes_the_candidate_champion(registry):
    status, output = registry["steps"]["first"]
    assert status == 0, output
    assert "first champion: glyphs@champion is version 1" in output  # (its tags now hold a later decision)


def test_better_candidate_is_promoted_on_paired_episodes_and_both_scores_are_recorded(registry):
    status, output = registry["steps"]["second"]
    assert status == 0, output
    client = registry["client"]
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["promotion.decision"] == "promoted", output
    assert tags["promotion.champion_version"] == "1"
    candidate, champion = float(tags["promotion.candidate_accuracy"]), float(tags["promotion.champion_accuracy"])
    assert candidate > champion
    assert float(tags["promotion.paired_difference"]) == pytest.approx(candidate - champion, abs=2e-4)
    # the gate re-scores on the evaluate stage's episodes: the same figure the register stage tagged
    assert candidate == pytest.approx(float(tags["test_accuracy"]), abs=1e-4)


def test_promote_run_holds_the_paired_comparison_and_the_description_says_why(registry, tmp_path):
    client = registry["client"]
    version = client.get_model_version(MODEL, "2")
    run_id = version.tags["promotion.run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["learn2tune.role"] == "promote"
    record = json.loads(Path(client.download_artifacts(run_id, "promotion.json", str(tmp_path))).read_text())
    assert record["dataset_fingerprint"] == version.tags["dataset_fingerprint"]
    assert record["episodes"].startswith("60 x 5w1s") and record["decision"] == "promoted"
    table = json.loads(Path(client.download_artifacts(run_id, "promotion/comparison.json", str(tmp_path))).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(frame) == 60
    assert frame["candidate_accuracy"].mean() == pytest.approx(float(record["candidate_accuracy"]), abs=1e-4)
    assert list(frame["difference"]) == pytest.approx(list(frame["candidate_accuracy"] - frame["champion_accuracy"]))
    assert "promotion/comparison.png" in {a.path for a in client.list_artifacts(run_id, "promotion")}
    assert version.description.startswith("Promoted to champion")
    for number in (record["candidate_accuracy"], record["champion_accuracy"], record["paired_difference"]):
        assert number in version.description
    # the tags keep what a registry search needs; the rest is in the run
    assert not {"promotion.episodes", "promotion.time", "promotion.candidate_ci95"} & set(version.tags)


def test_worse_candidate_is_kept_out_and_old_versions_stay(registry):
    status, output = registry["steps"]["stale"]
    assert status == 0, output
    client = registry["client"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == 2
    kept = client.get_model_version(MODEL, "1")
    assert kept.tags["promotion.decision"] == "kept version 2"
    assert kept.description.splitlines()[0].startswith("First champion")  # each promote adds its line
    assert "Kept out" in kept.description.splitlines()[-1] and "stays version 2" in kept.description
    assert client.get_model_version(MODEL, "2").tags["promotion.defended_against"] == "1"
    assert {v.version for v in client.search_model_versions(f"name = '{MODEL}'")} == {1, 2, 3}


def test_models_of_different_datasets_are_not_compared(registry):
    status, output = registry["steps"]["other_dataset"]
    assert status == 2
    assert "cannot compare glyphs version 3 with champion version 2: dataset fingerprint" in output
    assert "--force" in output and "Traceback" not in output
    assert registry["client"].get_model_version_by_alias(MODEL, "champion").version == 2


def test_serve_refuses_a_missing_version_in_one_line(registry):
    process = subprocess.run(
        [_cli(), "serve", registry["configs"]["protonet"], "--version", "9"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert process.returncode == 2
    assert (
        process.stderr.strip() == f"learn2tune: error: model 'glyphs' in {registry['uri']} has no version 9 "
        "(registry.model_name / --name picks the model)"
    )


# --- the scoring server ----------------------------------------------------------------------


def _serve(config: str, *extra: str):
    port = free_port()
    return local_server([_cli(), "serve", config, "--port", str(port), *extra], port, env=_env())


@pytest.fixture(scope="module")
def champion_server(registry):
    with _serve(registry["configs"]["protonet"]) as client:
        yield client


@pytest.fixture(scope="module")
def test_split(registry):
    return DatasetStore.open(registry["root"] / "data-0").split("test")


def test_served_champion_scores_the_evaluate_stages_episodes_exactly_as_evaluate_did(
    registry, champion_server, test_split
):
    evaluation = json.loads((registry["root"] / "runs/tune/protonet/evaluation.json").read_text())
    evaluated = evaluation["models"][0]["results"]["5w1s"]["accuracy"]
    correct = []
    for batch in fixed_episodes(test_split, EpisodeSpec(5, 1, 5), 60, seed=0, batch_tasks=16):
        for task in range(batch.support_x.shape[0]):
            support, query = _task_images(batch, task)
            predictions = champion_server.predict(support, query)
            truth = [f"class-{y}" for y in batch.query_y[task].tolist()]
            correct.append(np.mean([p.label == t for p, t in zip(predictions, truth, strict=True)]))
    served = float(np.mean(correct))
    print(f"served {served:.4f} vs evaluate stage {evaluated:.4f} on the same 60 episodes")
    assert served == pytest.approx(evaluated, abs=1e-9)
    assert served > 0.5  # chance is 0.2


def test_served_predictions_equal_the_loaded_pyfunc(registry, champion_server, test_split):
    import mlflow

    batch = next(iter(fixed_episodes(test_split, EpisodeSpec(5, 2, 5), 1, seed=3)))
    support, query = _task_images(batch, 0)
    served = champion_server.predict(support, query)
    body = request_body(support, query)["dataframe_split"]
    mlflow.set_tracking_uri(registry["uri"])
    local = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
        pd.DataFrame(body["data"], columns=body["columns"])
    )
    assert [p.label for p in served] == local["label"].tolist()
    for remote, probabilities in zip(served, local["probabilities"], strict=True):
        assert remote.probabilities == pytest.approx(probabilities, abs=1e-6)
        assert remote.notes == ""


def test_images_of_another_size_are_resized_and_the_response_says_so(champion_server, test_split):
    batch = next(iter(fixed_episodes(test_split, EpisodeSpec(5, 1, 1), 1, seed=4)))
    support, query = _task_images(batch, 0)
    big = [(label, np.kron(image[0], np.ones((2, 2), np.uint8))) for label, image in support]
    predictions = champion_server.predict(big, query)
    assert predictions[0].notes == "5 image(s) resized from 56×56 to 28×28"
    assert predictions[0].label in {label for label, _ in support}


def test_colour_images_sent_to_a_grey_model_are_converted_and_the_response_says_so(champion_server, test_split):
    batch = next(iter(fixed_episodes(test_split, EpisodeSpec(5, 1, 2), 1, seed=7)))
    support, query = _task_images(batch, 0)
    tinted = [(label, (image[0][..., None] * np.array([1.0, 0.6, 0.2])).astype(np.uint8)) for label, image in support]
    predictions = champion_server.predict(tinted, query)
    assert [p.notes for p in predictions] == ["5 image(s) converted from RGB to grayscale"] * len(query)
    luma = [(label, np.asarray(Image.fromarray(image).convert("L"))) for label, image in tinted]
    same = champion_server.predict(luma, query)  # what the conversion gives, sent as grey
    assert [p.label for p in predictions] == [p.label for p in same] and same[0].notes == ""
    for converted, grey in zip(predictions, same, strict=True):
        assert converted.probabilities == pytest.approx(grey.probabilities, abs=1e-6)


BAD_REQUESTS = {
    "no support set": (lambda s, q: request_body([], q), "no support rows"),
    "support row without a label": (
        lambda s, q: _edit(request_body(s, q), 0, 1, None),
        "row 0: support rows need a label",
    ),
    "labels do not match images": (
        lambda s, q: {
            "dataframe_split": {
                "columns": ["role", "label", "image"],
                "data": [r[:2] for r in request_body(s, q)["dataframe_split"]["data"]],
            }
        },
        "",  # MLflow's own schema check; only the status and a message are asserted
    ),
    "not an image": (lambda s, q: _edit(request_body(s, q), 1, 2, "bm90IGFuIGltYWdl"), "row 1: image is not a base64"),
    "two colour channels": (
        lambda s, q: _edit(request_body(s, q), 2, 2, np.zeros((2, 28, 28)).tolist()),
        "row 2: image of shape [2, 28, 28]",
    ),
    "far from square": (
        lambda s, q: _edit(request_body(s, q), 0, 2, encode_image(np.zeros((10, 40), np.uint8))),
        "too far from square",
    ),
    "pixel values out of range": (
        lambda s, q: _edit(request_body(s, q), 3, 2, np.full((28, 28), 300).tolist()),
        "values must be numbers in 0-255",
    ),
    "one class only": (lambda s, q: request_body([s[0]], q), "the support set has one class"),
    "unknown role": (lambda s, q: _edit(request_body(s, q), 5, 0, "target"), "row 5: role must be"),
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_malformed_request_gets_400_with_a_message_and_the_server_keeps_answering(kind, champion_server, test_split):
    batch = next(iter(fixed_episodes(test_split, EpisodeSpec(5, 1, 2), 1, seed=5)))
    support, query = _task_images(batch, 0)
    build, message = BAD_REQUESTS[kind]
    with pytest.raises(ServingError) as error:
        champion_server.invoke(build(support, query))
    assert error.value.status == 400 and message in error.value.message and error.value.message
    if message:  # the model's own refusal: that line alone, not MLflow's dump of the request before it
        refusal = error.value.message
        assert "Failed to predict" not in refusal and "\n" not in refusal and len(refusal) < 300, refusal[:300]
    assert len(champion_server.predict(support, query)) == len(query)  # still serving


def test_more_ways_than_a_fixed_head_model_supports_gets_400(registry, test_split):
    batch = next(iter(fixed_episodes(test_split, EpisodeSpec(7, 1, 1), 1, seed=6)))
    support, query = _task_images(batch, 0)
    with _serve(registry["configs"]["protonet"], "--version", "1") as maml:  # a 5-way MAML
        with pytest.raises(ServingError) as error:
            maml.predict(support, query)
        assert error.value.status == 400 and "7-way" in error.value.message, error.value.message
        assert len(maml.predict(support[:5], query[:5])) == 5


# --- helpers -----------------------------------------------------------------------------------


def _task_images(batch, task: int) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """Support (label, uint8 C×H×W) pairs and query images of one task of an episode batch."""
    support = [
        (f"class-{y}", x.numpy()) for x, y in zip(batch.support_x[task], batch.support_y[task].tolist(), strict=True)
    ]
    return support, [x.numpy() for x in batch.query_x[task]]


def _edit(body: dict, row: int, column: int, value) -> dict:
    body["dataframe_split"]["data"][row][column] = value
    return body
