"""The Ray Tune function trainable: meta-train one learner config, report val accuracy, checkpoint.

Runs inside a Ray worker (in the trial's own directory, so every path it gets is absolute).
Each trial logs to its own nested MLflow run, found or created under the search's parent run
by trial id, so a trial restarted after a failure keeps logging to the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from mlflow import MlflowClient
from ray import tune

from learners.base import Learner
from learners.checkpoint import fresh_learner, load_learner, save_learner
from learners.registry import make_hparams
from pipeline import tracking
from pipeline.config import Config
from pipeline.device import TrialDevice, trial_device
from pipeline.errors import PipelineError
from pipeline.placement import DEVICE_ERROR_TAG, device_tags, gpu_ids, placement_tags
from pipeline.scoring import episode_accuracies
from pipeline.space import FAMILY_KEY, INDEX_KEY, NODE_KEY, trial_hparams
from pipeline.trial_data import SharedDataset, TrialDataset, trial_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes

RESTORED_TAG = "learn2tune.restored_from_iteration"  # set when a trial resumes from a checkpoint


@dataclass(frozen=True)
class TrialContext:
    """What the driver hands every trial, besides the trial's own sampled config."""

    config: Config
    experiment_id: str
    parent_run_id: str
    shared: SharedDataset | None = None  # the dataset in Ray's object store (search.data: object-store)


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
    try:  # a failure from here on, even building the learner (out of memory), ends the run FAILED
        device = _device(config, client, run_id)
        store = trial_dataset(config, context.shared)  # never the driver's disk
        learner, start = _initial_learner(family, hparams, store.image_shape, config, seed, device.device)
        if start:
            client.set_tag(run_id, RESTORED_TAG, str(start))
        _train(learner, start, store, config, seed, client, run_id, family, device)
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
) -> None:
    search, episodes = config.search, config.episodes
    target = EpisodeSpec(episodes.train.ways, episodes.train.shots, episodes.train.query)
    # A resumed trial draws fresh episodes rather than replaying the ones before its checkpoint.
    sampler_seed = int(np.random.SeedSequence([seed, start]).generate_state(1)[0])
    train_split = store.split("train")
    wanted = learner.training_spec(target)
    # A family that trains with more ways than configured (ProtoNet's train_ways) gets at most
    # every class of the split, rather than a trial that fails on a small dataset.
    spec = dataclasses.replace(wanted, ways=min(wanted.ways, train_split.num_classes))
    sampler = EpisodeSampler(train_split, spec, tasks=episodes.meta_batch, seed=sampler_seed)
    val_batches = list(fixed_episodes(store.split("val"), target, episodes.val.episodes, seed=config.seed))
    device = learner.device
    placement = {"device": str(device_used.device), NODE_KEY: ray.get_runtime_context().get_node_id()}
    window: list[dict[str, float]] = []
    for iteration in range(start + 1, search.max_iterations + 1):
        window.append(learner.meta_train_step(sampler.sample().to(device)))
        loss = window[-1]["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"{family} training loss became {loss} at iteration {iteration}")
        last = iteration == search.max_iterations
        if iteration % search.eval_every and not last:
            continue
        metrics = {
            "iteration": iteration,
            "loss": float(np.mean([m["loss"] for m in window])),
            "train_accuracy": float(np.mean([m["accuracy"] for m in window])),
            "val_accuracy": float(episode_accuracies(learner, val_batches, device).mean()),
        }
        window = []
        first_report = iteration <= start + search.eval_every  # this attempt's first: the warning goes once
        warning = {"device_warning": device_used.warning} if device_used.warning and first_report else {}
        tracking.log_metrics(client, run_id, {k: v for k, v in metrics.items() if k != "iteration"}, iteration)
        if iteration % search.checkpoint_every == 0 or last:
            with tempfile.TemporaryDirectory(prefix="learn2tune-ckpt-") as directory:
                save_learner(learner, directory, {"iteration": iteration})
                report = {**metrics, **placement, **warning, FAMILY_KEY: family}
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report({**metrics, **placement, **warning, FAMILY_KEY: family})
