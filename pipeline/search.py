"""The search stage: a Ray Tune sweep (Optuna define-by-run + ASHA) over learner families.

Reads the dataset directory; writes the Tune experiment directory ``<workdir>/tune/<name>``
with ``search_result.json`` (every trial, best first, with its checkpoint and MLflow run),
which is all the evaluate stage needs. MLflow gets one parent run per search, one nested
child run per trial (created by the trial itself), and the best trials on the parent.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from learners.registry import make_hparams
from pipeline import datasets, tracking
from pipeline.config import Config
from pipeline.errors import PipelineError, SearchFailed, SearchInterrupted
from pipeline.io import read_json, write_json_atomic
from pipeline.plots import learning_curve
from pipeline.ray_runtime import check_trial_resources, connect
from pipeline.space import FAMILY_KEY, INDEX_KEY, define_by_run, trial_hparams
from pipeline.table import format_params, format_table

RESULT_FILE = "search_result.json"
STATE_FILE = "search_state.json"  # the MLflow parent run of the search, for --resume
METRIC = "val_accuracy"
CURVES = ("loss", "train_accuracy", "val_accuracy")

Out = Callable[[str], None]


def search(config: Config, out: Out, environ: Mapping[str, str], resume: bool = False) -> dict[str, Any]:
    """Run the sweep ``config`` describes (or finish an interrupted one); returns and writes the result."""
    store = datasets.open_dataset(config)
    datasets.check_search_episodes(store, config)
    state = _interrupted_search(config.experiment_dir) if resume else None
    connect(config.ray.address, environ)
    check_trial_resources(config.search.resources)

    # Everything is validated: from here on the stage writes.
    client = tracking.make_client(config.tracking.uri)
    if state is None:
        _set_aside_previous(config.experiment_dir, out)
        state = _start_parent_run(client, config, store.fingerprint)
        write_json_atomic(config.experiment_dir / STATE_FILE, state)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
    experiment_id, parent_run_id = state["experiment_id"], state["parent_run_id"]
    out(
        f"search {config.name}: {config.search.trials} trials over {', '.join(config.search.families)}, "
        f"up to {config.search.max_iterations} meta-iterations each (MLflow parent run {parent_run_id})"
    )
    status = "FAILED"
    try:
        grid = _fit(config, experiment_id, parent_run_id, resume)
        if _interrupted(config.experiment_dir, config.search.trials):
            status = "KILLED"
            raise SearchInterrupted(
                f"the search was interrupted; finish it with `learn2tune search --resume` (experiment {config.name!r})"
            )
        trials = _finish_trials(grid, client, experiment_id, parent_run_id, config)
        result = _search_result(config, store.fingerprint, experiment_id, parent_run_id, trials)
        write_json_atomic(config.experiment_dir / RESULT_FILE, result)
        _log_on_parent(client, parent_run_id, result)
        _print_summary(result, out)
        if not result["trials"] or all(t["error"] for t in result["trials"]):
            raise SearchFailed(f"all {len(result['trials'])} trials failed; see the errors above")
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _close_open_runs(client, experiment_id, parent_run_id, status)


def _interrupted_search(experiment_dir: Path) -> dict[str, str]:
    """The MLflow ids of the interrupted search in ``experiment_dir``; an error when there is none."""
    from ray.tune import Tuner

    if (experiment_dir / RESULT_FILE).exists():
        raise PipelineError(f"the search in {experiment_dir} already finished; nothing to resume")
    if not (experiment_dir / STATE_FILE).is_file() or not Tuner.can_restore(str(experiment_dir)):
        raise PipelineError(f"no interrupted search to resume in {experiment_dir}")
    return read_json(experiment_dir / STATE_FILE, "")


def _start_parent_run(client, config: Config, fingerprint: str) -> dict[str, str]:
    config_dict = config.as_dict()
    experiment_id = tracking.ensure_experiment(client, config.tracking.experiment, config.tracking.uri)
    parent_run_id = tracking.start_run(
        client,
        experiment_id,
        f"search-{time.strftime('%Y%m%d-%H%M%S')}",
        {
            tracking.ROLE_TAG: "search",
            "learn2tune.experiment_dir": str(config.experiment_dir),
            "learn2tune.dataset_fingerprint": fingerprint,
            "learn2tune.families": ",".join(config.search.families),
        },
    )
    tracking.log_params(client, parent_run_id, tracking.flatten(config_dict))
    client.log_dict(parent_run_id, config_dict, "config.json")
    return {"experiment_id": experiment_id, "parent_run_id": parent_run_id}


def _set_aside_previous(experiment_dir: Path, out: Out) -> None:
    """Move an earlier search of the same name aside (``<name>-<time>``): nothing is deleted."""
    if not experiment_dir.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(experiment_dir.stat().st_mtime))
    target = experiment_dir.with_name(f"{experiment_dir.name}-{stamp}")
    copies = 0
    while target.exists():
        copies += 1
        target = experiment_dir.with_name(f"{experiment_dir.name}-{stamp}-{copies}")
    os.replace(experiment_dir, target)
    out(f"note: the previous search in {experiment_dir} was moved to {target}")


def _fit(config: Config, experiment_id: str, parent_run_id: str, resume: bool):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from pipeline.progress import ProgressLines
    from pipeline.trainable import TrialContext, train_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = config.search
    context = TrialContext(config=config, experiment_id=experiment_id, parent_run_id=parent_run_id)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, context=context),
        {"cpu": search.resources.cpu, "gpu": search.resources.gpu},
    )
    if resume:
        return tune.Tuner.restore(str(config.experiment_dir), trainable=trainable, resume_errored=True).fit()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                space=define_by_run(search.families, search.fixed), metric=METRIC, mode="max", seed=config.seed
            ),
            scheduler=ASHAScheduler(
                time_attr="iteration",
                metric=METRIC,
                mode="max",
                max_t=search.max_iterations,
                grace_period=search.grace_iterations,
            ),
            num_samples=search.trials,
            max_concurrent_trials=search.max_concurrent,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str(Path(config.workdir) / "tune"),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=METRIC, checkpoint_score_order="max"
            ),
            callbacks=[ProgressLines()],
            verbose=0,
        ),
    )
    return tuner.fit()


def _interrupted(experiment_dir: Path, trials: int) -> bool:
    """Whether Tune stopped on Ctrl+C: its saved state (what ``--resume`` restores) has unfinished trials.

    The ResultGrid cannot tell: Tune marks the trials it stops on a signal TERMINATED there.
    """
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(str(experiment_dir)).trials
    return len(saved) < trials or any(t.status not in ("TERMINATED", "ERROR") for t in saved)


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish_trials(grid, client, experiment_id: str, parent_run_id: str, config: Config) -> list[dict[str, Any]]:
    """One record per trial; each child run gets its artifacts and a final status."""
    runs = tracking.child_runs(client, experiment_id, parent_run_id)
    trials = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        run = runs.get(trial_id)
        record = _trial_record(result, trial_id, run.info.run_id if run else None, config)
        if run is not None:
            _log_trial_artifacts(client, record, result, chance=1 / config.episodes.train.ways)
            client.set_terminated(run.info.run_id, "FAILED" if record["error"] else "FINISHED")
        trials.append(record)
    trials.sort(key=lambda t: (t["val_accuracy"] is None, -(t["val_accuracy"] or 0.0)))
    return trials


def _trial_record(result, trial_id: str, run_id: str | None, config: Config) -> dict[str, Any]:
    family = result.config[FAMILY_KEY]
    params = trial_hparams(result.config, config.search.fixed)
    best = max(result.best_checkpoints or [], key=lambda pair: pair[1].get(METRIC, -1.0), default=None)
    return {
        "trial_id": trial_id,
        "index": result.config[INDEX_KEY],
        "run_id": run_id,
        "family": family,
        "params": params,  # searched and fixed; "hparams" adds the family's defaults
        "hparams": dataclasses.asdict(make_hparams(family, params)),
        "val_accuracy": best[1][METRIC] if best else None,
        "best_iteration": best[1]["iteration"] if best else None,
        "iterations": (result.metrics or {}).get("iteration", 0),
        "checkpoint": best[0].path if best else None,
        "final_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "error": _reason(result.error) if result.error else None,
    }


def _log_trial_artifacts(client, record: dict[str, Any], result, chance: float) -> None:
    run_id = record["run_id"]
    client.log_dict(run_id, {k: v for k, v in record.items() if k != "run_id"}, "trial.json")
    curves = {
        key: sorted({m.step: m.value for m in client.get_metric_history(run_id, key)}.items()) for key in CURVES
    }
    if any(curves.values()):
        title = f"{record['family']} trial {record['trial_id']}"
        client.log_figure(run_id, learning_curve(curves, title, chance), "learning_curve.png")
    if result.checkpoint is not None:
        client.log_artifacts(run_id, result.checkpoint.path, "checkpoint")


def _search_result(
    config: Config, fingerprint: str, experiment_id: str, parent_run_id: str, trials: list[dict[str, Any]]
) -> dict[str, Any]:
    train = config.episodes.train
    return {
        "experiment": config.name,
        "experiment_dir": str(config.experiment_dir),
        "metric": METRIC,
        "dataset": {"dir": str(config.dataset_dir), "fingerprint": fingerprint},
        "val_episodes": {
            "ways": train.ways,
            "shots": train.shots,
            "query": train.query,
            "episodes": config.episodes.val.episodes,
            "seed": config.seed,
        },
        "mlflow": {
            "tracking_uri": config.tracking.uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
        },
        "trials": trials,
    }


def _log_on_parent(client, parent_run_id: str, result: dict[str, Any]) -> None:
    ranked = [t for t in result["trials"] if t["val_accuracy"] is not None]
    failed = sum(1 for t in result["trials"] if t["error"])
    tracking.log_metrics(client, parent_run_id, {"trials": len(result["trials"]), "failed_trials": failed})
    for rank, trial in enumerate(ranked[:3], start=1):
        tracking.log_metrics(client, parent_run_id, {f"best{rank}_val_accuracy": trial["val_accuracy"]})
        client.set_tag(parent_run_id, f"best{rank}", f"{trial['family']} trial {trial['trial_id']} run {trial['run_id']}")
    client.log_dict(parent_run_id, result, RESULT_FILE)


def _print_summary(result: dict[str, Any], out: Out) -> None:
    rows = [
        (
            t["trial_id"],
            t["family"],
            format_params(t["params"]),
            t["val_accuracy"],
            t["best_iteration"],
            t["iterations"],
            "error" if t["error"] else "ok",
        )
        for t in result["trials"]
    ]
    headers = ("trial", "family", "params", "val acc", "best at", "iterations", "status")
    out("\n" + format_table(headers, rows))
    errors = [t for t in result["trials"] if t["error"]]
    if errors:
        out(f"\n{len(errors)} trial(s) failed:")
        for trial in errors:
            out(f"  {trial['trial_id']} ({trial['family']}): {trial['error']}")


def _reason(error: BaseException) -> str:
    """The last line of an error (Ray wraps trial errors with the remote traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _close_open_runs(client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the parent with ``status``; any child run still RUNNING ends KILLED (interrupted)."""
    for run in tracking.child_runs(client, experiment_id, parent_run_id).values():
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(parent_run_id, status)
