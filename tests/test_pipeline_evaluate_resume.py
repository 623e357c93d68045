"""Evaluate keeps what it finished: a real `learn2tune evaluate` process interrupted (SIGINT) after
its first of three models; that model's scores are in evaluation.json and in MLflow, register
refuses the unfinished record, and a re-run scores only the other two (plus an untrained baseline).

The search stage is replaced by its output: three ProtoNet checkpoints (each the network its
trial index seeds, the first meta-trained a few steps), their MLflow runs under a parent run,
and the ``search_result.json`` that lists them, so no Ray is needed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from learners.checkpoint import fresh_learner, load_learner, save_learner
from pipeline import tracking
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.evaluate import untrained_learner
from pipeline.records import DatasetRef, MlflowRef, SearchResult, TrialRecord, ValEpisodes
from pipeline.scoring_progress import ScoringProgress
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.store import DatasetStore

CONFIG = """\
name: resume
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{dir: "{root}/dataset"}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  test: {{ways: [3], shots: [1], query: 2, episodes: {episodes}}}
registry: {{top_k: 3}}
"""
EPISODES = 400  # a second or more per model on a shared 2-core CPU: the signal lands between models
WIDTHS = (8, 8, 4)


def _search_output(root: Path) -> tuple[Path, list[TrialRecord]]:
    """The dataset, the three trials' checkpoints and runs, and search_result.json."""
    (root / "resume.yaml").write_text(CONFIG.format(root=root, episodes=EPISODES))
    config = load_config(root / "resume.yaml", cwd=root, environ={})
    spec = BuildSpec(synthetic_classes=30, synthetic_images_per_class=6, seed=config.seed)
    manifest = build_dataset(spec, config.dataset_dir)
    store = DatasetStore.open(config.dataset_dir)
    client = tracking.make_client(config.tracking.uri)
    experiment_id = tracking.ensure_experiment(client, config.tracking.experiment, config.tracking.uri)
    parent = tracking.start_run(client, experiment_id, "search", {tracking.ROLE_TAG: "search"})
    trials = []
    for index, width in enumerate(WIDTHS):
        hparams = {"width": width, "train_ways": 0}
        learner_spec = {"family": "protonet", "hparams": hparams, "image_shape": list(store.image_shape), "ways": 3}
        learner = fresh_learner(learner_spec, config.seed + index)
        if index == 0:  # meta-trained a little, so its untrained network scores differently
            sampler = EpisodeSampler(store.split("train"), EpisodeSpec(3, 1, 2), tasks=4, seed=0)
            for _ in range(5):
                learner.meta_train_step(sampler.sample().to("cpu"))
        trial_id = f"t{index}"
        checkpoint = root / "runs" / "tune" / "resume" / trial_id / "checkpoint_000000"
        save_learner(learner, checkpoint, {"iteration": 5})
        run_id = tracking.start_run(client, experiment_id, trial_id, {tracking.TRIAL_TAG: trial_id}, parent)
        trials.append(
            TrialRecord(
                trial_id=trial_id,
                index=index,
                run_id=run_id,
                family="protonet",
                params=hparams,
                hparams=dataclasses.asdict(learner.hparams),
                val_accuracy=0.9 - 0.1 * index,
                best_iteration=5,
                iterations=5,
                checkpoint=str(checkpoint),
                final_checkpoint=str(checkpoint),
                error=None,
                failed_attempts=0,
                node_id=None,
                device="cpu",
            )
        )
    result = SearchResult(
        experiment="resume",
        experiment_dir=str(config.experiment_dir),
        metric="val_accuracy",
        dataset=DatasetRef(dir=str(config.dataset_dir), fingerprint=manifest["fingerprint"]),
        val_episodes=ValEpisodes(ways=3, shots=1, query=2, episodes=config.episodes.val.episodes, seed=config.seed),
        mlflow=MlflowRef(tracking_uri=config.tracking.uri, experiment_id=experiment_id, parent_run_id=parent),
        trials=trials,
    )
    (config.experiment_dir / "search_result.json").write_text(json.dumps(result.to_json()))
    return config.experiment_dir / "evaluation.json", trials


@pytest.fixture(scope="module")
def search_output(tmp_path_factory) -> tuple[Path, Path, list[TrialRecord]]:
    root = tmp_path_factory.mktemp("resume")
    return (root, *_search_output(root))


def _models_in(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["models"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_interrupted_evaluate_keeps_the_first_model_and_a_rerun_scores_only_the_rest(search_output, capsys):
    tmp_path, record_path, trials = search_output
    config_file = str(tmp_path / "resume.yaml")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with (tmp_path / "evaluate.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "evaluate", config_file],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 240
        while _models_in(record_path) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130, (tmp_path / "evaluate.log").read_text()
    assert "interrupted: the 1 model(s) scored are kept in" in (tmp_path / "evaluate.log").read_text()

    record = json.loads(record_path.read_text())
    assert record["complete"] is False and [m["trial_id"] for m in record["models"]] == ["t0"], record
    first = record["models"][0]["results"]["3w1s"]
    client = tracking.make_client(f"sqlite:///{tmp_path}/mlflow.db")
    metrics = client.get_run(trials[0].run_id).data.metrics
    assert metrics["test_acc_3w1s"] == pytest.approx(first["accuracy"])
    assert "test_acc_3w1s" not in client.get_run(trials[1].run_id).data.metrics

    assert main(["register", config_file]) == 2
    assert "unfinished evaluation (1 model(s) scored before it stopped)" in capsys.readouterr().err

    assert main(["evaluate", config_file, "--untrained", "protonet"]) == 0
    printed = capsys.readouterr().out
    assert "keeping the scores of 1 model(s) an earlier evaluate finished" in printed
    assert "protonet trial t0: scored by an earlier evaluate on the same episodes (kept)" in printed
    assert "protonet trial t0 3w1s:" not in printed and "protonet trial t2 3w1s:" in printed
    record = json.loads(record_path.read_text())
    assert record["complete"] is True and record["winner"] == "t0"
    assert [m["trial_id"] for m in record["models"]] == ["t0", "t1", "t2"]
    assert record["models"][0]["results"]["3w1s"] == first
    assert len(client.get_metric_history(trials[0].run_id, "test_acc_3w1s")) == 1  # logged once
    assert "test_acc_3w1s" in client.get_run(trials[2].run_id).data.metrics
    (baseline,) = record["untrained"]
    assert baseline["trial_id"] == "t0" and baseline["untrained"] is True
    assert baseline["results"]["3w1s"]["accuracy"] != first["accuracy"]
    untrained = client.get_run(trials[0].run_id).data.metrics["untrained_test_acc_3w1s"]
    assert untrained == pytest.approx(baseline["results"]["3w1s"]["accuracy"])
    # each model's per-episode table holds its episodes once: the kept model is not logged again
    for trial, prefix in ((trials[0], ""), (trials[0], "untrained_"), (trials[2], "")):
        table = Path(client.download_artifacts(trial.run_id, f"evaluation/{prefix}episodes.json", str(tmp_path / "t")))
        assert len(json.loads(table.read_text())["data"]) == EPISODES


def test_untrained_network_is_the_one_the_trial_started_from(search_output):
    root, _, trials = search_output
    config = load_config(root / "resume.yaml", cwd=root, environ={})
    rebuilt = untrained_learner(trials[1], config, "cpu").state_dict()
    checkpoint = load_learner(str(trials[1].checkpoint))[0].state_dict()  # trial 1 was saved untrained
    assert rebuilt.keys() == checkpoint.keys() and all(torch.equal(rebuilt[k], checkpoint[k]) for k in rebuilt)
    trained = load_learner(str(trials[0].checkpoint))[0].state_dict()
    first = untrained_learner(trials[0], config, "cpu").state_dict()
    assert not all(torch.equal(first[k], trained[k]) for k in first)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_scoring_progress_prints_eta_lines_and_warns_about_a_slow_model():
    lines: list[str] = []
    clock = Clock()
    progress = ScoringProgress(
        "reptile trial 7",
        600,
        lines.append,
        earlier_s=[10.0, 12.0],
        slow_hint="test_inner_steps 50",
        every_s=30.0,
        clock=clock,
    )
    clock.now = 20.0
    progress.advance(10)  # 2 s per episode: ~20 minutes for 600, 100x the others' 11 s
    clock.now = 40.0
    progress.advance(10)
    clock.now = 50.0
    progress.advance(10)  # under 30 s since the last line: nothing printed
    assert len(lines) == 2
    assert lines[0].startswith("  warning: reptile trial 7 scores about 109x slower than the models before it")
    assert "(test_inner_steps 50)" in lines[0]
    assert lines[1] == "  reptile trial 7: 20/600 episodes (3%), 0.5/s, 40s elapsed, ETA 19m20s"
    stream = io.StringIO()
    live = ScoringProgress("protonet trial 1", 4, lines.append, stream=stream, clock=clock)
    for _ in range(4):
        clock.now += 1.0
        live.advance(1)
    drawn = stream.getvalue()  # tqdm's bar on a terminal, left there when done
    assert drawn.startswith("\r") and "protonet trial 1: 100%" in drawn and "4/4" in drawn and drawn.endswith("\n")
    assert len(lines) == 2  # nothing more went to the log
