"""The one meta-training loop: draw a batch (episodes, or what the family's training sampler draws), step,
refuse a diverging loss, report, mark checkpoints.

The Tune trainable (:mod:`pipeline.trainable`) and the Omniglot table benchmark
(:mod:`benchmarks.omniglot_cell`) both train through :func:`meta_train`; what a report becomes (MLflow
metrics and ``tune.report`` with a checkpoint, or a point of a training curve) is the caller's callback.
Nothing here imports Ray, so a benchmark trains without Tune.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from learners.base import Learner
from pipeline.scoring import episode_accuracies
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.store import SplitStore


@dataclass(frozen=True)
class TrainingEpisodes:
    """What a learner trains on: episodes of ``spec`` (as configured) from ``split``, ``tasks`` per step
    (a family with its own :meth:`~learners.base.Learner.training_sampler` draws its batches from ``split``)."""

    split: SplitStore
    spec: EpisodeSpec
    tasks: int  # the meta-batch
    seed: int  # the sampler's seed


@dataclass(frozen=True)
class Schedule:
    """How long to train and when to report: every ``report_every`` meta-iterations and at the last one."""

    iterations: int  # the last meta-iteration
    report_every: int
    checkpoint_every: int | None = None  # reports at its multiples (and the last) ask for a checkpoint


@dataclass(frozen=True)
class Report:
    """The meta-iterations since the previous report, summarised."""

    iteration: int
    loss: float  # mean training loss of those meta-iterations
    train_accuracy: float  # mean query accuracy of their meta-batches
    val_accuracy: float | None  # mean over the validation episodes; None without any
    checkpoint: bool  # whether the caller should save a checkpoint with this report


def training_spec(learner: Learner, configured: EpisodeSpec, split: SplitStore) -> EpisodeSpec:
    """The episodes ``learner`` trains on for the ``configured`` ones.

    A family that trains with more ways than configured (ProtoNet's ``train_ways``) gets at most every
    class of ``split``, rather than a run that fails on a small dataset.
    """
    wanted = learner.training_spec(configured)
    return dataclasses.replace(wanted, ways=min(wanted.ways, split.num_classes))


def meta_train(
    learner: Learner,
    episodes: TrainingEpisodes,
    schedule: Schedule,
    on_report: Callable[[Report], bool | None],
    start: int = 0,
    validation: Sequence[EpisodeBatch] = (),
) -> Report | None:
    """Meta-train ``learner`` from meta-iteration ``start + 1`` to ``schedule.iterations``.

    ``on_report`` gets every report; when it returns true, training ends after that report (a
    search's time budget is spent). ``validation`` is scored at each (through the evaluate stage's
    path). A non-finite loss raises :class:`FloatingPointError` naming the family and the meta-iteration.
    Returns the last report (None when ``start`` is already the last meta-iteration).
    """
    spec = training_spec(learner, episodes.spec, episodes.split)
    sampler = learner.training_sampler(episodes.split, spec, episodes.tasks, episodes.seed)
    device = learner.device
    window: list[dict[str, float]] = []
    report = None
    for iteration in range(start + 1, schedule.iterations + 1):
        metrics = learner.meta_train_step(sampler.sample().to(device))
        loss = metrics["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"{learner.family} training loss became {loss} at iteration {iteration}")
        window.append(metrics)
        last = iteration == schedule.iterations
        if iteration % schedule.report_every and not last:
            continue
        every = schedule.checkpoint_every
        report = Report(
            iteration=iteration,
            loss=float(np.mean([m["loss"] for m in window])),
            train_accuracy=float(np.mean([m["accuracy"] for m in window])),
            val_accuracy=float(episode_accuracies(learner, validation, device).mean()) if validation else None,
            checkpoint=last or (every is not None and iteration % every == 0),
        )
        window = []
        if on_report(report):
            break
    return report
