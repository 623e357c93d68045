"""The evaluate stage: the best checkpoints of a search, scored on fixed-seed TEST-split episodes.

Reads ``search_result.json`` (the top ``registry.top_k`` trials by validation accuracy, and
with ``registry.best_per_family`` each family's best trial as well) and the dataset; every
model sees the same episodes per (ways, shots) setting, so comparisons are paired. Writes
``evaluation.json`` beside the search result and logs ``test_acc_<W>w<S>s`` and
``test_ci95_<W>w<S>s`` on each evaluated trial's run and (for the winner) on the parent, with
the per-episode table and figures of :mod:`pipeline.evaluation_artifacts`.
Both are written model by model (:mod:`pipeline.evaluation_record`): an interrupted evaluate
keeps what it finished, and running it again scores only the rest.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TextIO

from learners.checkpoint import SPEC_FILE, fresh_learner, load_learner
from pipeline import dataset_inputs, datasets, evaluation_artifacts, tracking
from pipeline.config import Config
from pipeline.device import pick_device
from pipeline.errors import PipelineError
from pipeline.evaluation_artifacts import SettingEpisodes
from pipeline.evaluation_record import EvaluationRecord, check_complete
from pipeline.records import (
    Evaluation,
    EvaluationEpisodes,
    ScoredModel,
    SearchResult,
    SettingScore,
    TrialRecord,
    read_record,
)
from pipeline.scoring import mean_ci95, score_episodes
from pipeline.scoring_progress import ScoringProgress
from pipeline.search import RESULT_FILE
from pipeline.table import format_table
from tasks import storage
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes
from tasks.say import Say as Out

IMAGES_PER_BATCH = 2000

EVALUATION_FILE = "evaluation.json"


def setting_key(ways: int, shots: int) -> str:
    return f"{ways}w{shots}s"


def read_search_result(config: Config) -> SearchResult:
    return read_record(
        SearchResult,
        config.experiment_location.child(RESULT_FILE),
        f"no finished search for experiment {config.name!r}; run `learn2tune search` first",
    )


def read_evaluation(config: Config) -> Evaluation:
    """The finished evaluation of ``config``'s experiment (an unfinished one is an error)."""
    path = config.experiment_location.child(EVALUATION_FILE)
    hint = f"experiment {config.name!r} has not been evaluated; run `learn2tune evaluate` first"
    return check_complete(read_record(Evaluation, path, hint), path)


def evaluate(config: Config, out: Out, untrained: Sequence[str] = (), stream: TextIO | None = None) -> Evaluation:
    """Score the top-k trials on every test setting; returns (and writes) the evaluation.

    Each model's scores are written (``evaluation.json`` and its run's MLflow metrics) as soon
    as it is done, and a re-run on the same episodes keeps them. ``untrained`` names families
    whose best trial is also scored as the network it started from, before any meta-training.
    ``stream`` (a terminal) shows progress as a line rewritten in place.
    """
    search = read_search_result(config)
    store = datasets.open_dataset(config)
    if store.fingerprint != search.dataset.fingerprint:
        raise PipelineError(
            f"the dataset in {config.dataset_dir} (fingerprint {store.fingerprint}) is not the one experiment "
            f"{config.name!r} was searched on ({search.dataset.fingerprint})"
        )
    datasets.check_test_episodes(store, config)
    finished = [t for t in search.trials if t.evaluable]
    candidates = select_trials(finished, config.registry.top_k, config.registry.best_per_family)
    if not candidates:
        raise PipelineError(f"no trial of experiment {config.name!r} finished with a checkpoint to evaluate")
    baselines = untrained_trials(finished, untrained, config.name)
    client = tracking.make_client(config.tracking.uri)
    parent_run_id = search.mlflow.parent_run_id
    check_run_exists(client, parent_run_id, config)

    test = config.episodes.test
    primary = setting_key(*test.settings()[0])
    head = Evaluation(
        experiment=config.name,
        dataset=search.dataset,
        test_episodes=EvaluationEpisodes(query=test.query, episodes=test.episodes, seed=config.seed),
        primary=primary,
        mlflow=search.mlflow,
    )
    record = EvaluationRecord(config.experiment_location.child(EVALUATION_FILE), head)
    out(
        f"evaluate {config.name}: {len(candidates)} trial(s) by val accuracy"
        + (f" and {len(baselines)} untrained" if baselines else "")
        + f", {test.episodes} test episodes per setting ({', '.join(setting_key(w, s) for w, s in test.settings())})"
        + (f"; keeping the scores of {record.kept} model(s) an earlier evaluate finished" if record.kept else "")
    )
    scored_runs = [parent_run_id, *(t.run_id for t in [*candidates, *baselines] if t.run_id)]
    dataset_inputs.log_inputs(client, scored_runs, dataset_inputs.test_inputs(store.manifest, store.location))
    device = pick_device(config.device)
    test_split = store.split("test")
    seconds = record.earlier_seconds()
    jobs = [(trial, False) for trial in candidates] + [(trial, True) for trial in baselines]
    try:
        for trial, fresh in jobs:
            model, episodes = evaluate_trial(trial, fresh, test_split, config, device, out, record, seconds, stream)
            if model.seconds is not None:  # something new was scored
                tracking.log_metrics(client, model.run_id, _metrics(model))
                evaluation_artifacts.log_model_episodes(client, model, episodes, head.test_episodes)
            record.add(model)  # after MLflow: a model in the record has its metrics logged too
    except KeyboardInterrupt:
        out(
            f"\ninterrupted: the {len(record.models)} model(s) scored are kept in {record.path}; "
            "run `learn2tune evaluate` again to score the rest"
        )
        raise
    scored = [m for m in record.models if not m.untrained and primary in m.results]
    if not scored:
        raise PipelineError(f"none of the evaluated models can score the primary setting {primary}")
    # Never select on the test split: the winner is the best trial by validation accuracy
    # that can score the primary setting; the test figures of the others are reported only.
    winner = max(scored, key=lambda m: m.val_accuracy)
    selection = f"the best validation accuracy among the trials that score {primary}"
    tracking.log_metrics(client, parent_run_id, _metrics(winner))
    client.set_tag(parent_run_id, "learn2tune.evaluated_winner", f"{winner.family} trial {winner.trial_id}")
    evaluation = record.finish(selection, winner.trial_id)
    evaluation_artifacts.log_evaluation(client, parent_run_id, evaluation)
    _print_summary(evaluation, out)
    return evaluation


def untrained_trials(trials: list[TrialRecord], families: Sequence[str], experiment: str) -> list[TrialRecord]:
    """The best finished trial (by validation accuracy) of each family in ``families``."""
    chosen = []
    for family in dict.fromkeys(families):
        best = next((t for t in trials if t.family == family), None)  # trials are ranked best first
        if best is None:
            searched = ", ".join(sorted({t.family for t in trials})) or "none"
            raise PipelineError(
                f"--untrained {family}: experiment {experiment!r} has no finished {family} trial "
                f"(families with one: {searched})"
            )
        chosen.append(best)
    return chosen


def select_trials(trials: list[TrialRecord], top_k: int, per_family: bool) -> list[TrialRecord]:
    """The first ``top_k`` of ``trials`` (best first) and, with ``per_family``, the best trial of
    every family that has none among them (by validation accuracy only: never the test split)."""
    chosen = trials[:top_k]
    if per_family:
        families = {t.family for t in chosen}
        for trial in trials[top_k:]:
            if trial.family not in families:
                families.add(trial.family)
                chosen.append(trial)
    return chosen


def tasks_per_batch(spec: EpisodeSpec) -> int:
    """Episodes scored together: about ``IMAGES_PER_BATCH`` images, so 20-way 5-shot stays in memory."""
    return max(1, IMAGES_PER_BATCH // (spec.ways * spec.images_per_class))


def evaluate_trial(
    trial: TrialRecord,
    fresh: bool,
    test_split,
    config: Config,
    device,
    out: Out,
    record: EvaluationRecord,
    seconds: list[float],
    stream: TextIO | None,
) -> tuple[ScoredModel, dict[str, SettingEpisodes]]:
    """One model's scores on every test setting, keeping those an earlier run left in ``record``,
    and the episodes of the settings it scored now.

    ``fresh``: score the network the trial started from (same spec and seed), not its checkpoint.
    ``seconds`` holds the scoring time of the models before it (for the slow-model warning).
    """
    test = config.episodes.test
    unscored = ScoredModel.of(trial, fresh, results={}, seconds=None)
    results = record.earlier_results(unscored.key)
    label = f"{trial.family} trial {trial.trial_id}{' (untrained)' if fresh else ''}"
    if fresh:
        learner = untrained_learner(trial, config, device)
    else:
        learner, _ = load_checkpoint(str(trial.checkpoint), config, device)
    todo = []
    for ways, shots in test.settings():
        try:
            learner.check_ways(ways)
        except ValueError as exc:
            out(f"note: {label} skips {setting_key(ways, shots)}: {exc}")
            continue
        if setting_key(ways, shots) not in results:
            todo.append((ways, shots))
    progress = ScoringProgress(
        label, len(todo) * test.episodes, out, stream, seconds, slow_hint=_adaptation_hint(trial.hparams)
    )
    scored = {}
    for ways, shots in todo:
        spec = EpisodeSpec(ways, shots, test.query)
        episodes = fixed_episodes(test_split, spec, test.episodes, seed=config.seed, batch_tasks=tasks_per_batch(spec))
        counted = progress.count(episodes, lambda batch: batch.tasks)
        accuracies, confusion = score_episodes(learner, counted, device)
        accuracy, ci95 = mean_ci95(accuracies)
        results[setting_key(ways, shots)] = SettingScore(ways, shots, test.episodes, accuracy, ci95)
        scored[setting_key(ways, shots)] = SettingEpisodes(accuracies, confusion)
        out(f"  {label} {setting_key(ways, shots)}: {accuracy:.4f} ± {ci95:.4f}")
    if todo:
        seconds.append(progress.elapsed)
    elif results:
        out(f"  {label}: scored by an earlier evaluate on the same episodes (kept)")
    seconds_taken = round(progress.elapsed, 3) if todo else None
    return dataclasses.replace(unscored, results=results, seconds=seconds_taken), scored


def untrained_learner(trial: TrialRecord, config: Config, device):
    """The network ``trial`` started from: its checkpoint's spec, initialised with its seed."""
    checkpoint = storage.resolve(str(trial.checkpoint), config.storage.endpoint_url)
    spec = json.loads(checkpoint.child(SPEC_FILE).read_bytes())
    return fresh_learner(spec, config.seed + trial.index, device)


def _adaptation_hint(hparams: dict[str, object]) -> str:
    """The test-time adaptation settings of a family (its ``*steps`` hyperparameters), for warnings."""
    return ", ".join(f"{k} {v}" for k, v in sorted(hparams.items()) if k.endswith("steps"))


def load_checkpoint(uri: str, config: Config, device="cpu"):
    """The learner (and extra state) of a trial checkpoint: a local path or a storage URI,
    downloaded to a temporary directory first when remote."""
    with storage.local_copy(storage.resolve(uri, config.storage.endpoint_url), "learn2tune-ckpt-") as directory:
        return load_learner(directory, device)


def _metrics(model: ScoredModel) -> dict[str, float]:
    """``test_acc_<W>w<S>s`` / ``test_ci95_...``; ``untrained_test_...`` for an untrained network."""
    prefix = "untrained_" if model.untrained else ""
    metrics = {}
    for key, result in model.results.items():
        metrics[f"{prefix}test_acc_{key}"] = result.accuracy
        metrics[f"{prefix}test_ci95_{key}"] = result.ci95
    return metrics


def check_run_exists(client, run_id: str, config: Config) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise PipelineError(
            f"the search's MLflow run {run_id} is not in the tracking store {config.tracking.uri}; "
            "was the search tracked elsewhere (tracking.uri / MLFLOW_TRACKING_URI)?"
        ) from None


def _print_summary(evaluation: Evaluation, out: Out) -> None:
    everything = evaluation.models + evaluation.untrained
    keys = list(dict.fromkeys(k for m in everything for k in m.results))
    rows = []
    for model in everything:
        cells = []
        for key in keys:
            result = model.results.get(key)
            cells.append(f"{result.accuracy:.4f} ± {result.ci95:.4f}" if result else "skipped")
        family = f"{model.family} (untrained)" if model.untrained else model.family
        rows.append((model.trial_id, family, "" if model.untrained else model.val_accuracy, *cells))
    out("\n" + format_table(("trial", "family", "val acc", *(f"test {k}" for k in keys)), rows))
    out(f"winner: trial {evaluation.winner} (chosen by {evaluation.selection})")
