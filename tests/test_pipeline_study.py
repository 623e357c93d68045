"""The search's Optuna study on a real SQLite storage, without a Ray cluster: the searcher tells
Optuna each trial's best value, survives the pickling Tune saves it with, and a trial a kill lost
is marked FAIL after the search. (A whole search's study: tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from pipeline.space import define_by_run
from pipeline.study import LOST_NOTE, resolve_storage, settle_lost_trials
from pipeline.study_searcher import make_searcher

FAMILIES = ("protonet", "maml")


def _searcher(url: str, name: str = "study"):
    return make_searcher(define_by_run(FAMILIES, {}), "val_accuracy", seed=0, storage_url=url, study_name=name)


def _report(searcher, trial_id: str, value: float, step: int) -> None:
    searcher.on_trial_result(trial_id, {"val_accuracy": value, "training_iteration": step})


def test_each_trial_is_told_its_best_value_and_the_study_continues_after_unpickling(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(url)
    assert searcher.suggest("a")["family"] in FAMILIES
    _report(searcher, "a", 0.5, 1)
    _report(searcher, "a", 0.3, 2)
    searcher.on_trial_complete("a", {"val_accuracy": 0.4, "training_iteration": 3})  # the last, not the best
    searcher.suggest("b")
    restored = pickle.loads(pickle.dumps(searcher))  # as Tune saves and --resume restores it
    _report(restored, "b", 0.2, 1)
    restored.on_trial_complete("b", {"val_accuracy": 0.6, "training_iteration": 2})  # the last is the best
    restored.suggest("c")

    study = optuna.load_study(study_name="study", storage=url)
    assert [t.value for t in study.trials[:2]] == pytest.approx([0.5, 0.6])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.RUNNING]
    assert {study.trials[0].params["family"], study.trials[1].params["family"]} == set(FAMILIES)  # one each first


def test_trials_left_running_by_a_kill_are_marked_failed_with_a_note(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="killed", storage=url, direction="maximize")
    study.tell(study.ask(), 0.5)
    study.ask()  # asked, then the search was killed before Tune saved it
    assert settle_lost_trials(url, "killed") == 1
    done, lost = optuna.load_study(study_name="killed", storage=url).trials
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.5
    assert lost.state == optuna.trial.TrialState.FAIL and lost.user_attrs["learn2tune_note"] == LOST_NOTE
    assert settle_lost_trials(url, "killed") == 0


def test_storage_defaults_beside_the_experiment_and_relative_sqlite_paths_resolve_against_cwd(tmp_path: Path):
    cwd = tmp_path
    assert resolve_storage(None, str(cwd / "runs"), "exp", cwd) == f"sqlite:///{cwd}/runs/tune/exp/optuna.db"
    assert resolve_storage(None, "s3://bucket/runs", "exp", cwd) == f"sqlite:///{cwd}/optuna.db"
    assert resolve_storage("sqlite:///studies.db", str(cwd / "runs"), "exp", cwd) == f"sqlite:///{cwd}/studies.db"
    assert resolve_storage("postgresql://host/db", str(cwd), "exp", cwd) == "postgresql://host/db"
