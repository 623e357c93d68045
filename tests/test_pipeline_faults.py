"""Faults during a real search: the driver killed (SIGKILL) or interrupted (SIGINT) and resumed,
and trials that raise or diverge failing alone. Real Ray, a real SQLite MLflow store, real Parquet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from pipeline.cli import main
from pipeline.trainable import RESTORED_TAG

TRIALS, MAX_ITERATIONS, EVAL_EVERY = 3, 300, 10

CONFIG = """\
name: faults
seed: 0
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 6}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  val: {{episodes: {val_episodes}}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 4}}
search:
  families: {families}
  trials: {trials}
  max_iterations: {max_iterations}
  grace_iterations: {max_iterations}
  eval_every: {eval_every}
  checkpoint_every: {eval_every}
  max_concurrent: 1
  max_failures: 1
  fixed: {fixed}
"""
SMALL_PROTONET = "{protonet: {width: 8, train_ways: 0}}"


def write_config(root: Path, **fields: object) -> Path:
    values = {
        "families": "[protonet]",
        "trials": TRIALS,
        "max_iterations": MAX_ITERATIONS,
        "eval_every": EVAL_EVERY,
        "fixed": SMALL_PROTONET,
        "val_episodes": 40,  # with 300 iterations a trial lasts several seconds: a stop lands mid-trial
        **fields,
    }
    path = root / "faults.yaml"
    path.write_text(CONFIG.format(root=root, **values))
    assert main(["build", "-c", str(path)]) == 0
    return path


def mlflow_client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def all_runs(client, experiment_dir: Path) -> list:
    """Every MLflow run of the search in ``experiment_dir`` (its experiment named in the state file)."""
    experiment_id = json.loads((experiment_dir / "search_state.json").read_text())["experiment_id"]
    return client.search_runs([experiment_id], max_results=1000)


def saved_trials(experiment_dir: Path) -> dict[str, tuple[str, bool]]:
    """Trial id -> (status, has a checkpoint) as Tune's last saved experiment state has them.

    The checkpoint is the one the state records, not a folder on disk: a checkpoint persisted
    after the last state save is not one ``--resume`` can restore from.
    """
    from ray.tune import ExperimentAnalysis

    if not list(experiment_dir.glob("experiment_state-*.json")):
        return {}
    try:
        trials = ExperimentAnalysis(str(experiment_dir)).trials
    except ValueError:  # caught mid-write (json.JSONDecodeError is a ValueError): not saved yet
        return {}
    return {t.trial_id: (t.status, t.checkpoint is not None) for t in trials}


def start_search(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "pipeline.cli", "search", str(config)]
    with log.open("w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=config.parent)


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 240.0):
    """Poll ``condition()`` until it returns something truthy; fail if the search ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"the search ended early:\n{log.read_text()}"
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"timed out; search log:\n{log.read_text()}")


def some_finished_and_one_checkpointed(experiment_dir: Path) -> bool:
    """Whether Tune's saved state holds a finished trial and an unfinished one with a checkpoint.

    Tune reads a trial that was running when the state was saved back as PENDING.
    """
    trials = saved_trials(experiment_dir).values()
    finished = any(status == "TERMINATED" for status, _ in trials)
    return finished and any(status != "TERMINATED" and checkpointed for status, checkpointed in trials)


@pytest.mark.parametrize(
    "stop, resume",
    [
        # ~65 s; a SIGKILL-ed search's resume also runs by default on a `ray start` cluster
        # (tests/test_cluster_storage.py), so this local one runs with -m slow
        pytest.param(signal.SIGKILL, "search", marks=pytest.mark.slow, id="SIGKILL-search--resume"),
        pytest.param(signal.SIGINT, "run", id="SIGINT-run--resume"),
    ],
)
def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path, pipeline_ray, capsys, stop, resume):
    config = write_config(tmp_path)
    experiment_dir = tmp_path / "runs/tune/faults"
    log = tmp_path / "search.log"
    process = start_search(config, log)
    wait_for(lambda: some_finished_and_one_checkpointed(experiment_dir), process, log)
    process.send_signal(stop)
    code = process.wait(timeout=120)
    before = saved_trials(experiment_dir)  # what --resume will find
    finished_before = {trial_id for trial_id, (status, _) in before.items() if status == "TERMINATED"}
    interrupted = [
        trial_id for trial_id, (status, checkpointed) in before.items() if status != "TERMINATED" and checkpointed
    ]
    assert finished_before and len(interrupted) == 1, before
    client = mlflow_client(tmp_path)
    if stop == signal.SIGINT:  # a graceful stop: a hint to resume, and no run left RUNNING
        assert code == 130, log.read_text()
        # our own hint, with the config the search was started with; none of Tune's advice to Tuner users
        assert f"finish it with `learn2tune search {config} --resume`" in log.read_text()
        assert "Tuner.restore" not in log.read_text() and "FileNotFoundError" not in log.read_text()
        assert {run.info.status for run in all_runs(client, experiment_dir)} <= {"FINISHED", "KILLED"}
    capsys.readouterr()

    assert main([resume, str(config), "--resume"]) == 0
    resumed_log = capsys.readouterr().out
    if resume == "run":  # then evaluated and registered as an uninterrupted run would be
        assert (experiment_dir / "evaluation.json").is_file()
        assert "registered" in resumed_log

    result = json.loads((experiment_dir / "search_result.json").read_text())
    trials = {t["trial_id"]: t for t in result["trials"]}
    assert len(trials) == TRIALS and not any(t["error"] for t in trials.values())
    assert all(t["iterations"] == MAX_ITERATIONS for t in trials.values())
    assert finished_before <= set(trials)
    for trial_id in finished_before:  # finished before the stop: not started again
        assert f"[{trial_id}] start" not in resumed_log
    assert interrupted[0] in trials
    assert int(client.get_run(trials[interrupted[0]]["run_id"]).data.tags[RESTORED_TAG]) >= EVAL_EVERY

    runs = all_runs(client, experiment_dir)
    parents = [run for run in runs if run.data.tags.get("learn2tune.role") == "search"]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    assert result["mlflow"]["parent_run_id"] == parent_id
    for trial in trials.values():  # one child run per trial under that parent, each step once
        run = client.get_run(trial["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["learn2tune.stop_reason"] == "max_iterations"  # ended by its trial, resumed or not
        steps = [m.step for m in client.get_metric_history(trial["run_id"], "val_accuracy")]
        expected = list(range(EVAL_EVERY, MAX_ITERATIONS + 1, EVAL_EVERY))
        if trial["trial_id"] == interrupted[0]:  # the resumed stretch may repeat one report
            assert sorted(set(steps)) == expected and steps.count(EVAL_EVERY) == 1
        else:
            assert sorted(steps) == expected
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
    assert client.get_run(parent_id).info.status == "FINISHED"

    # the same Optuna study, continued in its database: every trial in it, none left RUNNING
    tags = client.get_run(parent_id).data.tags
    study = optuna.load_study(study_name=tags["learn2tune.optuna_study"], storage=tags["learn2tune.optuna_storage"])
    in_study = {t.number: t for t in study.trials}
    for trial in trials.values():
        assert in_study[trial["index"]].state == optuna.trial.TrialState.COMPLETE
        if trial["trial_id"] != interrupted[0]:  # (its best may have come between the last save and the stop)
            assert in_study[trial["index"]].value == pytest.approx(trial["val_accuracy"])
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in study.trials}


def test_raising_and_diverging_trials_fail_alone_with_their_reasons(tmp_path, pipeline_ray, capsys):
    # MAML with an inner learning rate of 1e30 diverges to NaN on its first step; first-order
    # MAML 10^6 channels wide cannot allocate its first convolution (36 TB) and raises.
    fixed = (
        "{protonet: {width: 8, train_ways: 0}, maml: {width: 8, inner_lr: 1.0e30, path: split}, "
        "fomaml: {width: 1000000}}"
    )
    config = write_config(tmp_path, families="[protonet, maml, fomaml]", trials=3, max_iterations=10, fixed=fixed)
    capsys.readouterr()

    assert main(["search", str(config)]) == 0
    printed = capsys.readouterr().out

    result = json.loads((tmp_path / "runs/tune/faults/search_result.json").read_text())
    by_family = {t["family"]: t for t in result["trials"]}
    assert set(by_family) == {"protonet", "maml", "fomaml"}
    nan, oom, healthy = by_family["maml"], by_family["fomaml"], by_family["protonet"]
    assert nan["error"] == "FloatingPointError: maml training loss became nan at iteration 1"
    assert "can't allocate memory" in oom["error"]
    assert nan["failed_attempts"] == oom["failed_attempts"] == 2  # retried once (max_failures: 1)
    assert healthy["error"] is None and healthy["iterations"] == 10 and healthy["val_accuracy"] is not None
    assert result["trials"][0]["family"] == "protonet"  # best first

    assert f"[{nan['trial_id']}] failed (attempt 1): FloatingPointError" in printed
    assert f"[{nan['trial_id']}] FAILED after 2 attempt(s): FloatingPointError" in printed
    assert "2 of 3 trial(s) failed:" in printed
    assert f"{oom['trial_id']} (fomaml, 2 attempt(s)): RuntimeError" in printed

    client = mlflow_client(tmp_path)
    parent = client.get_run(result["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["failed_trials"] == 2
    assert nan["error"] in parent.data.tags["failed_trials"] and oom["error"] in parent.data.tags["failed_trials"]
    statuses = {t["family"]: client.get_run(t["run_id"]).info.status for t in result["trials"]}
    assert statuses == {"protonet": "FINISHED", "maml": "FAILED", "fomaml": "FAILED"}
    reasons = {t["family"]: client.get_run(t["run_id"]).data.tags["learn2tune.stop_reason"] for t in result["trials"]}
    assert reasons == {"protonet": "max_iterations", "maml": "error", "fomaml": "error"}
