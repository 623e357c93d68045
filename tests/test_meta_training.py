"""The one meta-training loop (pipeline/meta_training.py) with real learners on a real Parquet dataset:
its reports and checkpoints, a resumed start, the train_ways clamp, the divergence check, no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from learners.checkpoint import fresh_learner
from pipeline.meta_training import Report, Schedule, TrainingEpisodes, meta_train, training_spec
from pipeline.scoring import episode_accuracies
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes
from tasks.store import DatasetStore

REPO = Path(__file__).resolve().parents[1]
EPISODES = EpisodeSpec(3, 1, 2)


def protonet(store: DatasetStore, **hparams: object):
    spec = {"family": "protonet", "hparams": {"width": 8, **hparams}, "image_shape": list(store.image_shape), "ways": 3}
    return fresh_learner(spec, seed=0)


def test_reports_are_the_means_of_the_steps_since_the_last_with_checkpoints_when_due(tasks_small_dataset):
    """ProtoNet asks for 60-way training: the loop trains every one of the split's 24 classes instead,
    and each report is what stepping an identical learner by hand gives."""
    store = DatasetStore.open(tasks_small_dataset)
    train = store.split("train")
    validation = list(fixed_episodes(store.split("val"), EPISODES, 4, seed=0))
    learner, twin = protonet(store, train_ways=60), protonet(store, train_ways=60)
    assert training_spec(learner, EPISODES, train) == EpisodeSpec(train.num_classes, 1, 2) != EpisodeSpec(60, 1, 2)
    reports: list[Report] = []

    last = meta_train(
        learner, TrainingEpisodes(train, EPISODES, 2, seed=5), Schedule(7, 3, 6), reports.append, validation=validation
    )

    assert [(r.iteration, r.checkpoint) for r in reports] == [(3, False), (6, True), (7, True)]
    assert last == reports[-1]
    sampler = EpisodeSampler(train, EpisodeSpec(train.num_classes, 1, 2), tasks=2, seed=5)
    steps = [twin.meta_train_step(sampler.sample().to(twin.device)) for _ in range(7)]
    for report, window in zip(reports, (steps[0:3], steps[3:6], steps[6:7]), strict=True):
        assert report.loss == pytest.approx(np.mean([s["loss"] for s in window]))
        assert report.train_accuracy == pytest.approx(np.mean([s["accuracy"] for s in window]))
    assert reports[-1].val_accuracy == pytest.approx(float(episode_accuracies(twin, validation, twin.device).mean()))


def test_a_resumed_loop_goes_on_after_its_start_and_reports_nothing_once_done(tasks_small_dataset):
    store = DatasetStore.open(tasks_small_dataset)
    episodes = TrainingEpisodes(store.split("train"), EPISODES, 2, seed=0)
    reports: list[Report] = []

    meta_train(protonet(store), episodes, Schedule(9, 3), reports.append, start=6)
    assert meta_train(protonet(store), episodes, Schedule(9, 3), reports.append, start=9) is None

    assert [(r.iteration, r.checkpoint, r.val_accuracy) for r in reports] == [(9, True, None)]


def test_a_diverging_loss_stops_the_loop_naming_family_and_iteration(tasks_small_dataset):
    store = DatasetStore.open(tasks_small_dataset)
    spec = {"family": "maml", "hparams": {"width": 8, "inner_lr": 1e30, "path": "split"}, "ways": 3}
    learner = fresh_learner({**spec, "image_shape": list(store.image_shape)}, seed=0)
    reports: list[Report] = []

    with pytest.raises(FloatingPointError, match=r"^maml training loss became nan at iteration 1$"):
        meta_train(learner, TrainingEpisodes(store.split("train"), EPISODES, 2, seed=0), Schedule(5, 1), reports.append)
    assert reports == []


def test_the_loop_trains_without_ray_or_mlflow():
    code = "import sys, pipeline.meta_training; print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
