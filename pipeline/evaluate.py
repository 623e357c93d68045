"""The evaluate stage: the best checkpoints of a search, scored on fixed-seed TEST-split episodes.

Reads ``search_result.json`` (the top ``registry.top_k`` trials by validation accuracy, and
with ``registry.best_per_family`` each family's best trial as well) and the dataset; every
model sees the same episodes per (ways, shots) setting, so comparisons are paired. Writes
``evaluation.json`` beside the search result and logs ``test_acc_<W>w<S>s`` and
``test_ci95_<W>w<S>s`` on each evaluated trial's run and (for the winner) on the parent.
"""

from __future__ import annotations

from typing import Any, Callable

from learners.checkpoint import load_learner
from pipeline import datasets, tracking
from pipeline.config import Config
from pipeline.device import pick_device
from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json_atomic
from pipeline.scoring import episode_accuracies, mean_ci95
from pipeline.search import RESULT_FILE
from pipeline.table import format_table
from tasks import storage
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes

IMAGES_PER_BATCH = 2000

EVALUATION_FILE = "evaluation.json"

Out = Callable[[str], None]


def setting_key(ways: int, shots: int) -> str:
    return f"{ways}w{shots}s"


def read_search_result(config: Config) -> dict[str, Any]:
    return read_json(
        config.experiment_location.child(RESULT_FILE),
        f"no finished search for experiment {config.name!r}; run `learn2tune search` first",
    )


def read_evaluation(config: Config) -> dict[str, Any]:
    return read_json(
        config.experiment_location.child(EVALUATION_FILE),
        f"experiment {config.name!r} has not been evaluated; run `learn2tune evaluate` first",
    )


def evaluate(config: Config, out: Out) -> dict[str, Any]:
    """Score the top-k trials on every test setting; returns (and writes) the evaluation."""
    search = read_search_result(config)
    store = datasets.open_dataset(config)
    if store.fingerprint != search["dataset"]["fingerprint"]:
        raise PipelineError(
            f"the dataset in {config.dataset_dir} (fingerprint {store.fingerprint}) is not the one experiment "
            f"{config.name!r} was searched on ({search['dataset']['fingerprint']})"
        )
    datasets.check_test_episodes(store, config)
    finished = [t for t in search["trials"] if t["checkpoint"] and t["run_id"] and not t["error"]]
    candidates = select_trials(finished, config.registry.top_k, config.registry.best_per_family)
    if not candidates:
        raise PipelineError(f"no trial of experiment {config.name!r} finished with a checkpoint to evaluate")
    client = tracking.make_client(config.tracking.uri)
    parent_run_id = search["mlflow"]["parent_run_id"]
    _check_run_exists(client, parent_run_id, config)

    test = config.episodes.test
    primary = setting_key(*test.settings()[0])
    out(
        f"evaluate {config.name}: {len(candidates)} trial(s) by val accuracy, {test.episodes} test episodes "
        f"per setting ({', '.join(setting_key(w, s) for w, s in test.settings())})"
    )
    device = pick_device(config.device)
    test_split = store.split("test")
    models = [_evaluate_trial(trial, test_split, config, device, out) for trial in candidates]
    scored = [m for m in models if m["results"].get(primary)]
    if not scored:
        raise PipelineError(f"none of the evaluated models can score the primary setting {primary}")
    # Never select on the test split: the winner is the best trial by validation accuracy
    # that can score the primary setting; the test figures of the others are reported only.
    winner = max(scored, key=lambda m: m["val_accuracy"])
    selection = f"the best validation accuracy among the trials that score {primary}"
    evaluation = {
        "experiment": config.name,
        "dataset": search["dataset"],
        "test_episodes": {"query": test.query, "episodes": test.episodes, "seed": config.seed},
        "primary": primary,
        "selection": selection,
        "winner": winner["trial_id"],
        "mlflow": search["mlflow"],
        "models": models,
    }
    for model in models:
        tracking.log_metrics(client, model["run_id"], _metrics(model))
    tracking.log_metrics(client, parent_run_id, _metrics(winner))
    client.set_tag(parent_run_id, "learn2tune.evaluated_winner", f"{winner['family']} trial {winner['trial_id']}")
    write_json_atomic(config.experiment_location.child(EVALUATION_FILE), evaluation)
    _print_summary(evaluation, out)
    return evaluation


def select_trials(trials: list[dict[str, Any]], top_k: int, per_family: bool) -> list[dict[str, Any]]:
    """The first ``top_k`` of ``trials`` (best first) and, with ``per_family``, the best trial of
    every family that has none among them (by validation accuracy only: never the test split)."""
    chosen = trials[:top_k]
    if per_family:
        families = {t["family"] for t in chosen}
        for trial in trials[top_k:]:
            if trial["family"] not in families:
                families.add(trial["family"])
                chosen.append(trial)
    return chosen


def tasks_per_batch(spec: EpisodeSpec) -> int:
    """Episodes scored together: about ``IMAGES_PER_BATCH`` images, so 20-way 5-shot stays in memory."""
    return max(1, IMAGES_PER_BATCH // (spec.ways * spec.images_per_class))


def _evaluate_trial(trial: dict[str, Any], test_split, config: Config, device, out: Out) -> dict[str, Any]:
    test = config.episodes.test
    learner, _ = load_checkpoint(trial["checkpoint"], config, device)
    results: dict[str, Any] = {}
    for ways, shots in test.settings():
        try:
            learner.check_ways(ways)
        except ValueError as exc:
            out(f"note: {trial['family']} trial {trial['trial_id']} skips {setting_key(ways, shots)}: {exc}")
            continue
        spec = EpisodeSpec(ways, shots, test.query)
        episodes = fixed_episodes(
            test_split, spec, test.episodes, seed=config.seed, batch_tasks=tasks_per_batch(spec)
        )
        accuracy, ci95 = mean_ci95(episode_accuracies(learner, episodes, device))
        results[setting_key(ways, shots)] = {
            "ways": ways, "shots": shots, "episodes": test.episodes, "accuracy": accuracy, "ci95": ci95
        }
        out(f"  {trial['family']} trial {trial['trial_id']} {setting_key(ways, shots)}: {accuracy:.4f} ± {ci95:.4f}")
    keys = ("trial_id", "run_id", "family", "params", "hparams", "val_accuracy", "best_iteration", "checkpoint")
    return {**{k: trial[k] for k in keys}, "results": results}


def load_checkpoint(uri: str, config: Config, device="cpu"):
    """The learner (and extra state) of a trial checkpoint: a local path or a storage URI,
    downloaded to a temporary directory first when remote."""
    with storage.local_copy(storage.resolve(uri, config.storage.endpoint_url), "learn2tune-ckpt-") as directory:
        return load_learner(directory, device)


def _metrics(model: dict[str, Any]) -> dict[str, float]:
    metrics = {}
    for key, result in model["results"].items():
        metrics[f"test_acc_{key}"] = result["accuracy"]
        metrics[f"test_ci95_{key}"] = result["ci95"]
    return metrics


def _check_run_exists(client, run_id: str, config: Config) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise PipelineError(
            f"the search's MLflow run {run_id} is not in the tracking store {config.tracking.uri}; "
            "was the search tracked elsewhere (tracking.uri / MLFLOW_TRACKING_URI)?"
        ) from None


def _print_summary(evaluation: dict[str, Any], out: Out) -> None:
    keys = list(dict.fromkeys(k for m in evaluation["models"] for k in m["results"]))
    rows = []
    for model in evaluation["models"]:
        cells = []
        for key in keys:
            result = model["results"].get(key)
            cells.append(f"{result['accuracy']:.4f} ± {result['ci95']:.4f}" if result else "skipped")
        rows.append((model["trial_id"], model["family"], model["val_accuracy"], *cells))
    out("\n" + format_table(("trial", "family", "val acc", *(f"test {k}" for k in keys)), rows))
    out(f"winner: trial {evaluation['winner']} (chosen by {evaluation['selection']})")
