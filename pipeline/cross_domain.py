"""``evaluate --on TARGET``: the chosen trials scored on the test split of a dataset they never saw.

The BSCD-FSL protocol: trained on the experiment's source dataset, scored on another built
dataset's TEST split with the fixed-seed episodes of ``episodes.test``. TARGET is an experiment
name (its search's dataset) or a dataset directory (local path or storage URI). The target's
images are converted to the model's input as serving converts a request (``tasks.preprocess.prepare``:
resized, grey <-> colour), and one line says what was done. Each scored trial's run (and the parent,
for the winner by validation accuracy) gets ``test_acc_<dataset>_<W>w<S>s`` / ``test_ci95_...``,
the tag ``learn2tune.cross_domain.<dataset>.fingerprint`` and the target's test split as input;
``<experiment dir>/cross_domain/<dataset>.json`` holds the scores, written model by model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TextIO

import numpy as np

from pipeline import dataset_inputs, datasets, tracking
from pipeline.config import Config
from pipeline.device import pick_device
from pipeline.errors import PipelineError
from pipeline.evaluate import (
    check_run_exists,
    evaluate_trial,
    read_search_result,
    select_trials,
    setting_key,
)
from pipeline.evaluation_record import EvaluationRecord
from pipeline.records import DatasetRef, Evaluation, EvaluationEpisodes, ScoredModel, SearchResult, read_record
from pipeline.search import RESULT_FILE
from tasks import storage
from tasks.errors import DatasetError
from tasks.preprocess import prepare
from tasks.say import Say as Out
from tasks.storage import Location
from tasks.store import DatasetStore, SplitStore

RECORD_DIR = "cross_domain"
TAG = "learn2tune.cross_domain.{}.fingerprint"


@dataclasses.dataclass(frozen=True)
class Target:
    """The dataset to score on and the metric-safe name its metrics, tag and record carry."""

    name: str
    store: DatasetStore


def metric_name(text: str) -> str:
    """``text`` with every character MLflow metric keys do not allow (and ``.``) as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def resolve_target(target: str, config: Config) -> Target:
    """An experiment name (one with a finished search in this workdir) or a built dataset's directory."""
    result = config.tune_location.child(target).child(RESULT_FILE)
    if "/" not in target and result.is_file():
        search = read_record(SearchResult, result, "")
        return Target(metric_name(target), _open(search.dataset.dir, config, f"experiment {target!r}'s dataset"))
    location = storage.resolve(target, config.storage.endpoint_url)
    if not location.exists():
        raise PipelineError(
            f"--on {target}: neither an experiment with a finished search in {config.tune_location} "
            "nor a dataset directory"
        )
    return Target(metric_name(location.name), _open(target, config, f"--on {target}"))


def _open(directory: str, config: Config, what: str) -> DatasetStore:
    try:
        return DatasetStore.open(storage.resolve(directory, config.storage.endpoint_url))
    except DatasetError as exc:
        raise PipelineError(f"{what} is not a built dataset (run `learn2tune build` on it): {exc}") from None


def describe(name: str, image_shape: tuple[int, int, int], model_shape: tuple[int, int, int]) -> str:
    """One line: the target's images, the model's input, and the conversion between them."""
    (c, h, w), (mc, mh, mw) = image_shape, model_shape
    colour = {1: "grey", 3: "colour"}
    source, model = f"{h}x{w} {colour[c]}", f"{mh}x{mw} {colour[mc]}"
    if image_shape == model_shape:
        return f"target {name}: {source} images, the model's input: no conversion"
    changes = ([] if (h, w) == (mh, mw) else ["resized"]) + ([] if c == mc else [f"converted to {colour[mc]}"])
    return f"target {name}: {source} -> {model}: {', '.join(changes)}"


def convert_split(split: SplitStore, model_shape: tuple[int, int, int]) -> SplitStore:
    """``split`` with every image as the model takes it (``prepare``, as serving does); as is when it fits."""
    if split.image_shape == model_shape:
        return split
    channels, size, _ = model_shape
    images = np.stack(
        [
            prepare(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), size, channels)
            for image in split.images
        ]
    )
    images.setflags(write=False)
    return dataclasses.replace(split, images=images)


def record_path(config: Config, name: str) -> Location:
    """``<experiment dir>/cross_domain/<name>.json``."""
    return config.experiment_location.child(RECORD_DIR).child(f"{name}.json")


def evaluate_on(config: Config, target: str, out: Out, stream: TextIO | None = None) -> Evaluation:
    """Score the trials ``evaluate`` would choose on ``target``'s test split; returns (and writes) the record."""
    search = read_search_result(config)
    source = datasets.open_dataset(config)
    chosen = resolve_target(target, config)
    if chosen.store.fingerprint == search.dataset.fingerprint:
        raise PipelineError(
            f"--on {target}: that is the dataset experiment {config.name!r} was searched on; "
            "use `learn2tune evaluate` for in-domain scores"
        )
    datasets.check_test_episodes(chosen.store, config)
    finished = [t for t in search.trials if t.evaluable]
    candidates = select_trials(finished, config.registry.top_k, config.registry.best_per_family)
    if not candidates:
        raise PipelineError(f"no trial of experiment {config.name!r} finished with a checkpoint to evaluate")
    client = tracking.make_client(config.tracking.uri)
    parent_run_id = search.mlflow.parent_run_id
    check_run_exists(client, parent_run_id, config)

    test = config.episodes.test
    head = Evaluation(
        experiment=config.name,
        dataset=DatasetRef(str(chosen.store.path), chosen.store.fingerprint),
        test_episodes=EvaluationEpisodes(query=test.query, episodes=test.episodes, seed=config.seed),
        primary=setting_key(*test.settings()[0]),
        mlflow=search.mlflow,
    )
    record = EvaluationRecord(record_path(config, chosen.name), head)
    out(describe(chosen.name, chosen.store.image_shape, source.image_shape))
    out(
        f"evaluate {config.name} on {chosen.name}: {len(candidates)} trial(s) by val accuracy, "
        f"{test.episodes} test episodes per setting ({', '.join(setting_key(w, s) for w, s in test.settings())})"
        + (f"; keeping the scores of {record.kept} model(s) an earlier run finished" if record.kept else "")
    )
    runs = [parent_run_id, *(t.run_id for t in candidates if t.run_id)]
    dataset_inputs.log_inputs(client, runs, dataset_inputs.test_inputs(chosen.store.manifest, chosen.store.location))
    for run_id in runs:
        client.set_tag(run_id, TAG.format(chosen.name), chosen.store.fingerprint)
    test_split = convert_split(chosen.store.split("test"), source.image_shape)
    device = pick_device(config.device)
    seconds = record.earlier_seconds()
    for trial in candidates:
        model, _ = evaluate_trial(trial, False, test_split, config, device, out, record, seconds, stream)
        if model.seconds is not None:
            tracking.log_metrics(client, model.run_id, metrics(model, chosen.name))
        record.add(model)
    scored = [m for m in record.models if head.primary in m.results]
    if not scored:
        raise PipelineError(f"none of the evaluated models can score the primary setting {head.primary}")
    winner = max(scored, key=lambda m: m.val_accuracy)  # by validation accuracy, never the target's scores
    tracking.log_metrics(client, parent_run_id, metrics(winner, chosen.name))
    evaluation = record.finish(
        f"the best validation accuracy among the trials that score {head.primary}", winner.trial_id
    )
    out(f"scores of {len(record.models)} model(s) on {chosen.name} in {record.path}")
    return evaluation


def metrics(model: ScoredModel, name: str) -> dict[str, float]:
    """``test_acc_<name>_<W>w<S>s`` and ``test_ci95_<name>_<W>w<S>s`` of ``model``."""
    found = {}
    for key, result in model.results.items():
        found[f"test_acc_{name}_{key}"] = result.accuracy
        found[f"test_ci95_{name}_{key}"] = result.ci95
    return found
