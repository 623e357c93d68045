"""The Ray Tune function trainable: meta-train one learner config, report val accuracy, checkpoint.

The training itself is :func:`pipeline.meta_training.meta_train`; this module is its Tune adapter.

Runs inside a Ray worker (in the trial's own directory, so every path it gets is absolute).
Each trial logs to its own nested MLflow run, found or created under the search's parent run
by trial id, so a trial restarted after a failure keeps logging to the same run. A new run gets
the driver's context tags and the dataset's train and validation splits as inputs. The driver
ends the run (:mod:`pipeline.trial_runs`); reports that race past that end are not logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from mlflow import MlflowClient
from ray import tune

from learners.base import Learner
from learners.checkpoint import fresh_learner, load_learner, save_learner
from learners.registry import make_hparams
from pipeline import run_context, time_budget, tracking
from pipeline.config import Config
from pipeline.dataset_inputs import SplitInput, log_inputs
from pipeline.device import TrialDevice, trial_device
from pipeline.errors import PipelineError
from pipeline.meta_training import Report, Schedule, TrainingEpisodes, meta_train
from pipeline.placement import DEVICE_ERROR_TAG, device_tags, gpu_ids, placement_tags
from pipeline.space import FAMILY_KEY, INDEX_KEY, NODE_KEY, trial_hparams
from pipeline.trial_data import SharedDataset, TrialDataset, trial_dataset
from pipeline.trial_stops import BEST_METRIC, MAX_ITERATIONS_KEY, TIME_BUDGET_KEY
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes

RESTORED_TAG = "learn2tune.restored_from_iteration"  # set when a trial resumes from a checkpoint


@dataclass(frozen=True)
class TrialContext:
    """What the driver hands every trial, besides the trial's own sampled config."""

    config: Config
    experiment_id: str
    parent_run_id: str
    shared: SharedDataset | None = None  # the dataset in Ray's object store (search.data: object-store)
    run_tags: Mapping[str, str] = field(default_factory=dict)  # where the search came from (run_context)
    inputs: tuple[SplitInput, ...] = ()  # the splits a trial trains and validates on
    # epoch seconds past which a trial checkpoints and ends at its next report (search.time_budget)
    deadline: float | None = None


def train_trial(trial_config: dict[str, Any], context: TrialContext) -> None:
    """Meta-train the learner ``trial_config`` describes until ``max_iterations`` (or ASHA stops it)."""
    config = context.config
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per saved checkpoint
    trial_id = tune.get_context().get_trial_id()
    family = trial_config[FAMILY_KEY]
    hparams = make_hparams(family, trial_hparams(trial_config, config.search.fixed))
    index = trial_config[INDEX_KEY]
    seed = config.seed + index
    torch.set_num_threads(max(1, int(config.search.resources.cpu)))

    client = tracking.make_client(config.tracking.uri)
    run_id, new_run = tracking.trial_run(
        client, context.experiment_id, context.parent_run_id, trial_id, f"{family}-{index:03d}"
    )
    if new_run:
        params = {"family": family, "seed": seed, **dataclasses.asdict(hparams)}
        tracking.log_params(client, run_id, params)
        tracking.set_tags(client, run_id, context.run_tags)
        log_inputs(client, [run_id], context.inputs)
    try:  # a failure from here on, even building the learner (out of memory), ends the run FAILED
        device = _device(config, client, run_id)
        store = trial_dataset(config, context.shared)  # never the driver's disk
        learner, start = _initial_learner(family, hparams, store.image_shape, config, seed, device.device)
        if start:
            client.set_tag(run_id, RESTORED_TAG, str(start))
        with run_context.system_metrics(config.tracking.system_metrics, config.tracking.uri, run_id):
            _train(learner, start, store, config, seed, client, run_id, family, device, context.deadline)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise


def _device(config: Config, client: MlflowClient, run_id: str) -> TrialDevice:
    """The device this trial trains on, recorded on the trial's run with the node and resources
    it holds (those first, so a ``device: cuda`` without CUDA that fails here shows where it was)."""
    held = gpu_ids()
    tracking.set_tags(client, run_id, placement_tags(held, config.ray.env_vars, os.environ))
    try:
        device = trial_device(config.device, held)
    except PipelineError as exc:
        tracking.set_tags(client, run_id, {DEVICE_ERROR_TAG: str(exc)})
        raise
    tracking.set_tags(client, run_id, device_tags(device))
    return device


def _initial_learner(
    family: str, hparams: Any, image_shape: tuple[int, int, int], config: Config, seed: int, device: torch.device
) -> tuple[Learner, int]:
    """A fresh learner seeded for this trial, or the one in Tune's checkpoint when resuming."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            learner, extra = load_learner(directory, device)
        return learner, int(extra["iteration"])
    spec = {
        "family": family,
        "hparams": dataclasses.asdict(hparams),
        "image_shape": list(image_shape),
        "ways": config.episodes.train.ways,
    }
    return fresh_learner(spec, seed, device), 0  # evaluate --untrained rebuilds this very network


def _train(
    learner: Learner,
    start: int,
    store: TrialDataset,
    config: Config,
    seed: int,
    client: MlflowClient,
    run_id: str,
    family: str,
    device_used: TrialDevice,
    deadline: float | None,
) -> None:
    search, episodes = config.search, config.episodes
    target = EpisodeSpec(episodes.train.ways, episodes.train.shots, episodes.train.query)
    # A resumed trial draws fresh episodes rather than replaying the ones before its checkpoint.
    sampler_seed = int(np.random.SeedSequence([seed, start]).generate_state(1)[0])
    training = TrainingEpisodes(store.split("train"), target, episodes.meta_batch, sampler_seed)
    val_batches = list(fixed_episodes(store.split("val"), target, episodes.val.episodes, seed=config.seed))
    placement = {"device": str(device_used.device), NODE_KEY: ray.get_runtime_context().get_node_id()}
    fields: dict[str, object] = {**placement, FAMILY_KEY: family, MAX_ITERATIONS_KEY: search.max_iterations}
    if deadline is not None:
        fields[time_budget.DEADLINE_KEY] = deadline
    reports = TuneReports(learner, client, run_id, fields, device_used.warning, deadline)
    if start:  # a restarted trial: the best so far is on its run
        reports.best = client.get_run(run_id).data.metrics.get(BEST_METRIC)
    schedule = Schedule(search.max_iterations, search.eval_every, search.checkpoint_every)
    meta_train(learner, training, schedule, reports, start=start, validation=val_batches)


class TuneReports:
    """The loop's reports as a trial passes them on: MLflow metrics on the trial's run, then
    ``tune.report`` (ASHA's input) with ``fields`` added and, when due, a checkpoint of the learner.

    ``val_accuracy_best`` goes beside ``val_accuracy``: the best at a checkpoint so far, the
    figure the search ranks the trial by. Once the driver has ended the run (ASHA stopped the
    trial while it kept training towards its next report), nothing more is logged to it.
    Past the search's ``deadline`` a report is checkpointed and ends the trial (returns True).
    """

    def __init__(
        self,
        learner: Learner,
        client: MlflowClient,
        run_id: str,
        fields: Mapping[str, object],
        warning: str | None,
        deadline: float | None = None,
    ) -> None:
        self.learner, self.client, self.run_id, self.fields = learner, client, run_id, fields
        self.warning = warning  # goes with this attempt's first report only
        self.deadline = deadline
        self.best: float | None = None

    def __call__(self, report: Report) -> bool:
        ending = time_budget.spent(self.deadline, time.time())
        if ending:
            report = dataclasses.replace(report, checkpoint=True)
        curves = {"loss": report.loss, "train_accuracy": report.train_accuracy}
        if report.val_accuracy is not None:
            curves["val_accuracy"] = report.val_accuracy
            if report.checkpoint and (self.best is None or report.val_accuracy > self.best):
                self.best = report.val_accuracy
        if self.best is not None:
            curves[BEST_METRIC] = self.best
        if self.client.get_run(self.run_id).info.status == "RUNNING":  # else stopped: tune.report ends this thread
            tracking.log_metrics(self.client, self.run_id, curves, report.iteration)
        warning = {"device_warning": self.warning} if self.warning else {}
        self.warning = None
        stop = {TIME_BUDGET_KEY: True} if ending else {}
        fields = {"iteration": report.iteration, **curves, **self.fields, **warning, **stop}
        if not report.checkpoint:
            tune.report(fields)
            return ending
        with tempfile.TemporaryDirectory(prefix="learn2tune-ckpt-") as directory:
            save_learner(self.learner, directory, {"iteration": report.iteration})
            tune.report(fields, checkpoint=tune.Checkpoint.from_directory(directory))
        return ending
