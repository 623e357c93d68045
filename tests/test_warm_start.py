"""Warm-started search (pipeline/warm_start.py) with a real Ray, MLflow (SQLite) and Optuna storage.

One module fixture builds tiny glyphs, runs a past search (experiment ``past``: 2 trials, MAML's
``inner_lr`` fixed at 1e-9, outside the range the next search draws it from) and then a search of
experiment ``warm`` warm-started from it in the same tracking store. The conversion itself is
also tested without Ray (the only default test: the searches take ~45 s, over the CI headroom).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.space import FAMILY_KEY, INDEX_KEY, define_by_run
from pipeline.warm_start import (
    FIXED_DIFFERS,
    NO_KNOB,
    NOT_SEARCHED,
    OUTSIDE,
    Source,
    convert,
    find_sources,
    prepare,
)

CONFIG = """\
name: {name}
seed: 2
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{dir: {root}/glyphs, synthetic_classes: 40, synthetic_images_per_class: 12}}
episodes:
  train: {{ways: 5, shots: 1, query: 5}}
  meta_batch: 2
  val: {{episodes: 10}}
  test: {{query: 5, episodes: 10}}
search:
  families: [protonet, maml]
  trials: {trials}
  max_iterations: 10
  grace_iterations: 10
  eval_every: 10
  checkpoint_every: 10
  max_concurrent: 1
  fixed:
    protonet: {{width: 16, train_ways: 0}}
    maml: {{width: 16, path: loop, inner_steps: 1, test_inner_steps: 1{maml}}}
"""
PAST_MAML = ", inner_lr: 1.0e-9"  # outside Float(1e-2, 1.0): the warm search skips these past trials


@pytest.fixture(scope="module")
def warm(tmp_path_factory, pipeline_ray):
    """The root, the MLflow client, and both searches' results."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("warm")
    (root / "past.yaml").write_text(CONFIG.format(name="past", root=root, trials=2, maml=PAST_MAML))
    (root / "warm.yaml").write_text(CONFIG.format(name="warm", root=root, trials=2, maml=""))
    assert main(["build", "-c", str(root / "past.yaml")]) == 0
    assert main(["search", str(root / "past.yaml")]) == 0
    assert main(["search", str(root / "warm.yaml"), "--warm-start", "past"]) == 0
    past, new = (json.loads((root / f"runs/tune/{n}/search_result.json").read_text()) for n in ("past", "warm"))
    return root, MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db"), past, new


def _study(root: Path, result: dict) -> optuna.Study:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    name = client.get_run(result["mlflow"]["parent_run_id"]).info.run_name
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/runs/tune/warm/optuna.db")


def _matching(past: dict) -> list[dict]:
    return [t for t in past["trials"] if t["family"] == "protonet" and t["val_accuracy"] is not None]


@pytest.mark.slow  # the fixture's two searches take ~45 s on the shared 2-core machine
def test_the_study_holds_the_matching_past_trials_before_the_new_ones(warm):
    root, _, past, new = warm
    study = _study(root, new)
    matching = _matching(past)
    assert matching, "the past search ran protonet"
    seeded = study.trials[: len(matching)]
    assert len(study.trials) == len(matching) + len(new["trials"])
    assert sorted(float(t.value or 0.0) for t in seeded) == pytest.approx(sorted(t["val_accuracy"] for t in matching))
    assert all(t.params[FAMILY_KEY] == "protonet" and t.state.name == "COMPLETE" for t in seeded)
    assert sorted(t.params["protonet.lr"] for t in seeded) == pytest.approx(sorted(t["params"]["lr"] for t in matching))


@pytest.mark.slow  # the fixture's two searches take ~45 s on the shared 2-core machine
def test_the_best_past_trial_is_the_first_new_trial_and_indices_count_from_zero(warm):
    root, _, past, new = warm
    best = max(_matching(past), key=lambda t: t["val_accuracy"])
    by_index = sorted(new["trials"], key=lambda t: t["index"])
    assert [t["index"] for t in by_index] == [0, 1]
    first = by_index[0]
    assert first["family"] == "protonet" and first["params"] == best["params"]
    assert by_index[1]["family"] == "maml"  # the coverage queue: the family no past trial covered
    study = _study(root, new)
    assert study.trials[len(_matching(past))].params["protonet.lr"] == pytest.approx(best["params"]["lr"])


@pytest.mark.slow  # the fixture's two searches take ~45 s on the shared 2-core machine
def test_the_parent_run_records_the_sources_and_the_counts(warm):
    _, client, past, new = warm
    run = client.get_run(new["mlflow"]["parent_run_id"])
    maml_done = [t for t in past["trials"] if t["family"] == "maml" and t["val_accuracy"] is not None]
    assert run.data.tags["learn2tune.warm_start"] == past["mlflow"]["parent_run_id"]
    assert run.data.tags["learn2tune.warm_start_experiments"] == "past"
    assert run.data.metrics["warm_start_trials"] == len(_matching(past))
    assert run.data.metrics["warm_start_queued"] == 1
    assert run.data.metrics["warm_start_skipped"] == len(maml_done) > 0


@pytest.mark.slow  # the fixture's two searches take ~45 s on the shared 2-core machine
def test_an_unknown_experiment_is_one_line_naming_those_that_exist(warm):
    _, client, _, _ = warm
    with pytest.raises(ConfigError, match=r"search\.warm_start names 'nope'.*it has: .*past"):
        find_sources(client, ["nope"])
    assert [s.experiment for s in find_sources(client, "auto")] == ["past", "warm"]


def test_conversion_checks_family_knobs_and_ranges_against_the_current_space():
    space = define_by_run(("protonet",), {"protonet": {"width": 16, "train_ways": 0}})
    params = {"lr": 1e-3, "depth": 3, "distance": "cosine", "width": 16}
    trial = convert({"family": "protonet", "params": params, "val_accuracy": 0.7}, space)
    assert not isinstance(trial, str)
    assert trial.value == 0.7 and trial.params == {FAMILY_KEY: "protonet", "protonet.lr": 1e-3, "protonet.depth": 3,
                                                   "protonet.distance": "cosine"}  # fmt: skip
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial)  # the distributions are the ones the space suggests: the next ask agrees
    assert space(study.ask())[INDEX_KEY] == 1
    assert convert({"family": "maml", "params": {}, "val_accuracy": 0.5}, space) == NOT_SEARCHED
    assert convert({"family": "protonet", "params": {"lr": 1e-3}, "val_accuracy": 0.5}, space) == NO_KNOB
    assert convert({"family": "protonet", "params": {**params, "lr": 0.5}, "val_accuracy": 0.5}, space) == OUTSIDE
    assert convert(
        {"family": "protonet", "params": {**params, "backbone": "resnet12"}, "val_accuracy": 0.5}, space
    ) == (
        OUTSIDE  # the space sets conv4
    )
    fixed = {"protonet": {"width": 16, "train_ways": 0}}  # the config's search.fixed, as define_by_run had it
    assert not isinstance(convert({"family": "protonet", "params": params, "val_accuracy": 0.7}, space, fixed), str)
    wider = {"family": "protonet", "params": {**params, "width": 64}, "val_accuracy": 0.9}
    assert convert(wider, space, fixed) == FIXED_DIFFERS  # it trained another network than this search would
    assert prepare([Source("past", "run")], [wider], space, fixed).skipped == {FIXED_DIFFERS: 1}


def test_the_best_past_trial_per_family_is_queued_best_first_with_the_configs_points_winning():
    space = define_by_run(("protonet", "maml"), {"maml": {"width": 16}}, {"maml": {"inner_lr": 0.4}})
    maml = {"meta_lr": 1e-3, "inner_lr": 0.1, "inner_steps": 1, "depth": 3}
    protonet = {"lr": 1e-3, "width": 32, "depth": 3, "train_ways": 0, "distance": "cosine"}
    history: list[dict[str, Any]] = [
        {"family": "protonet", "params": protonet, "val_accuracy": 0.6},
        {"family": "protonet", "params": {**protonet, "lr": 2e-3}, "val_accuracy": 0.7},
        {"family": "maml", "params": maml, "val_accuracy": 0.8},
        {"family": "maml", "params": {**maml, "inner_lr": 5.0}, "val_accuracy": 0.9},  # outside Float(1e-2, 1.0)
        {"family": "relation", "params": {}, "val_accuracy": 0.9},
        {"family": "maml", "params": maml, "val_accuracy": None},  # never evaluated: neither added nor skipped
    ]
    warm = prepare([Source("past", "run")], history, space)
    assert len(warm.trials) == 3 and warm.skipped == {OUTSIDE: 1, NOT_SEARCHED: 1}
    assert [q[FAMILY_KEY] for q in warm.queued] == ["maml", "protonet"]  # by past accuracy
    assert warm.queued[0]["maml.inner_lr"] == 0.4 and warm.queued[0]["maml.meta_lr"] == 1e-3  # the point wins
    assert warm.queued[1]["protonet.lr"] == 2e-3
