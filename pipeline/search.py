"""The search stage: a Ray Tune sweep (Optuna define-by-run + ASHA) over learner families.

Reads the dataset directory (and with ``search.data: object-store`` puts the trials' splits
into Ray's object store once); writes the Tune experiment directory ``<workdir>/tune/<name>``
(a local path or a storage URI: Tune gets ``storage_path`` and ``storage_filesystem``)
with ``search_result.json`` (every trial, best first, with its checkpoint and MLflow run),
which is all the evaluate stage needs. MLflow gets one parent run per search, one nested
child run per trial (created by the trial itself), and the best trials on the parent.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

from learners.registry import make_hparams
from pipeline import dataset_inputs, datasets, run_context, search_artifacts, study, time_budget, tracking, warm_start
from pipeline.config import Config, grace_iterations
from pipeline.errors import PipelineError, SearchFailed, SearchInterrupted, error_reason
from pipeline.io import read_json, write_json_atomic
from pipeline.plots import learning_curve
from pipeline.ray_runtime import check_trial_resources, connect
from pipeline.records import DatasetRef, MlflowRef, SearchResult, TrialRecord, ValEpisodes
from pipeline.space import FAMILY_KEY, INDEX_KEY, NODE_KEY, ConditionalSpace, define_by_run, trial_hparams
from pipeline.table import format_params, format_table
from pipeline.trial_data import SharedDataset, share_dataset
from pipeline.trial_stops import ERROR, TIME_BUDGET, TIME_BUDGET_KEY, stop_reason
from tasks.say import Say as Out
from tasks.storage import Location

RESULT_FILE = "search_result.json"
STATE_FILE = "search_state.json"  # the MLflow parent run of the search, for --resume
METRIC = "val_accuracy"
CURVES = ("loss", "train_accuracy", "val_accuracy")
STATE_SAVE_SECONDS = 2
LOST_TRIAL_NOTE = "the search was killed before Tune saved this trial; the resumed search ran another in its place"


def search(config: Config, out: Out, environ: Mapping[str, str], resume: bool = False) -> SearchResult:
    """Run the sweep ``config`` describes (or finish an interrupted one); returns and writes the result."""
    from pipeline.progress import quiet_tune_hints

    store = datasets.open_dataset(config)
    datasets.check_search_episodes(store, config)
    experiment = config.experiment_location
    state: dict[str, Any] | None = _interrupted_search(experiment) if resume else None
    budget_s = time_budget.parse_budget(config.search.time_budget)
    if state is not None:
        time_budget.check_resume(state, budget_s)
    tracking.check_server(config.tracking.uri)  # before Ray starts; a local store is created only below
    run_context.check_system_metrics(config.tracking.system_metrics)
    connect(config.ray.address, environ, config.ray.env_vars, out)
    check_trial_resources(config.search.resources, out, config.ray.wait_for_resources)
    study.check_reachable(config.search.study_storage or "")
    shared = share_dataset(store) if config.search.data == "object-store" else None

    # Everything is validated: from here on the stage writes.
    client = tracking.make_client(config.tracking.uri)
    inputs = dataset_inputs.search_inputs(store.manifest, config.dataset_location)  # the store may be shared now
    sources = warm_start.find_sources(client, config.search.warm_start) if state is None else []
    if state is None:
        _set_aside_previous(experiment, client, out)
        clock = time_budget.new_clock(budget_s, time.time())
        state = {**_start_parent_run(client, config, store.fingerprint), **clock}
        tracking.log_dataset_report(client, state["parent_run_id"], store.manifest)
        dataset_inputs.log_inputs(client, [state["parent_run_id"]], inputs)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
        state = {**state, **time_budget.resumed_clock(state, budget_s, time_budget.last_saved(experiment), time.time())}
    write_json_atomic(experiment.child(STATE_FILE), state)
    budget = time_budget.budget_of(state)
    experiment_id, parent_run_id = state["experiment_id"], state["parent_run_id"]
    study_name = study.study_name(client, parent_run_id)
    space = _space(config)
    if config.search.warm_start and not resume:  # a resumed search continues its saved, seeded study
        space = warm_start.begin(client, sources, space, parent_run_id, study_name, config, out)
    out(
        f"search {config.name}: {time_budget.trials_wording(config.search.trials, budget)} over "
        f"{', '.join(config.search.families)}, "
        f"up to {config.search.max_iterations} meta-iterations each (MLflow parent run {parent_run_id})"
    )
    status = "FAILED"
    try:
        with quiet_tune_hints():  # the CLI prints the --resume command instead
            grid = _fit(config, space, shared, inputs, experiment_id, parent_run_id, resume, study_name, budget)
            used = budget.used(time.time()) if budget else 0.0
            attempts = _failed_attempts(experiment)
        short = len(attempts) < (config.search.trials or len(attempts) + 1)  # uncapped: only the budget ends it
        if None in attempts.values() or short and not (budget and time_budget.spent(budget.deadline, time.time())):
            status = "KILLED"
            raise SearchInterrupted(
                f"the search was interrupted; finish it with `learn2tune search --resume` "
                f"(or `learn2tune run --resume`; experiment {config.name!r})"
            )
        trials = _finish_trials(grid, client, experiment_id, parent_run_id, config, attempts)
        result = _search_result(config, store.fingerprint, experiment_id, parent_run_id, trials)
        write_json_atomic(experiment.child(RESULT_FILE), result.to_json())
        _log_on_parent(client, parent_run_id, result)
        _print_summary(result, out)
        if budget:
            by_budget = sum(t.stop_reason == TIME_BUDGET for t in trials)
            out(time_budget.summary_line(budget, used, len(trials), by_budget))
            time_budget.log_on_parent(client, parent_run_id, budget, used)
        search_artifacts.log_search_artifacts(client, parent_run_id, result, config, study_name, out)
        if not result.trials or all(t.error for t in result.trials):
            raise SearchFailed(f"all {len(result.trials)} trials failed; see the errors above")
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):  # Ctrl+C; SIGTERM, which Ray turns into SystemExit
        status = "KILLED"
        raise
    finally:
        _close_open_runs(client, experiment_id, parent_run_id, status)


def _interrupted_search(experiment: Location) -> dict[str, str]:
    """The MLflow ids of the interrupted search in ``experiment``; an error when there is none."""
    from ray.tune import Tuner

    if experiment.child(RESULT_FILE).exists():
        raise PipelineError(f"the search in {experiment} already finished; nothing to resume")
    restorable = experiment.child(STATE_FILE).is_file() and Tuner.can_restore(
        experiment.path, storage_filesystem=_tune_filesystem(experiment)
    )
    if not restorable:
        raise PipelineError(f"no interrupted search to resume in {experiment}")
    return read_json(experiment.child(STATE_FILE), "")


def _tune_filesystem(location: Location):
    """Tune's ``storage_filesystem`` beside ``location.path``: None for local paths (Tune's own
    default), else the object store's."""
    return None if location.local else location.filesystem


def _start_parent_run(client, config: Config, fingerprint: str) -> dict[str, str]:
    config_dict = config.as_dict()
    experiment_id = tracking.ensure_experiment(client, config.tracking.experiment, config.tracking.uri)
    parent_run_id = tracking.start_run(
        client,
        experiment_id,
        f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",  # experiments may hold several searches
        {
            tracking.ROLE_TAG: "search",
            "learn2tune.experiment_dir": str(config.experiment_location),
            "learn2tune.dataset_fingerprint": fingerprint,
            "learn2tune.families": ",".join(config.search.families),
            **run_context.context_tags("search"),
        },
    )
    tracking.log_params(client, parent_run_id, tracking.flatten(config_dict))
    client.log_dict(parent_run_id, config_dict, "config.json")
    return {"experiment_id": experiment_id, "parent_run_id": parent_run_id}


def _set_aside_previous(experiment: Location, client, out: Out) -> None:
    """Move an earlier search of the same name aside (``<name>-<time>``): nothing is deleted.

    If that search was killed before it could end its MLflow runs (SIGKILL, a lost node) and is
    now abandoned rather than resumed, its runs still RUNNING are ended KILLED first.
    """
    if not experiment.exists():
        return
    state_file = experiment.child(STATE_FILE)
    if state_file.is_file() and not experiment.child(RESULT_FILE).exists():
        state = read_json(state_file, "")
        _close_open_runs(client, state["experiment_id"], state["parent_run_id"], "KILLED")
    # Object stores keep no times for directories: there the state file's time stands in.
    stamped = experiment if experiment.local or not state_file.is_file() else state_file
    mtime = stamped.filesystem.get_file_info(stamped.path).mtime
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime.timestamp() if mtime else time.time()))
    target = experiment.sibling(f"{experiment.name}-{stamp}")
    copies = 0
    while target.exists():
        copies += 1
        target = experiment.sibling(f"{experiment.name}-{stamp}-{copies}")
    experiment.move_to(target)
    out(f"note: the previous search in {experiment} was moved to {target}")


def _fit(
    config: Config,
    space: ConditionalSpace,
    shared: SharedDataset | None,
    inputs: list[dataset_inputs.SplitInput],
    experiment_id: str,
    parent_run_id: str,
    resume: bool,
    study_name: str,
    budget: time_budget.Budget | None,
):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.budget_searcher import BudgetSearcher, cluster_slots
    from pipeline.progress import ProgressLines
    from pipeline.study_searcher import make_searcher
    from pipeline.trainable import TrialContext, train_trial
    from pipeline.trial_runs import TrialRunEnds

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # ProgressLines prints each trial error as one line with the path of its traceback.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Tune saves its experiment state (trial statuses, Optuna's study) at most this often; the
    # default (10 s or more) lets a SIGKILL lose trials that finished since the last save.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_SAVE_SECONDS))
    search = config.search
    context = TrialContext(
        config=config, experiment_id=experiment_id, parent_run_id=parent_run_id, shared=shared,
        run_tags=run_context.context_tags("search"),
        inputs=tuple(inputs), deadline=budget.deadline if budget else None,
    )  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, context=context),
        {"cpu": search.resources.cpu, "gpu": search.resources.gpu},
    )
    experiment = config.experiment_location
    if resume:
        return tune.Tuner.restore(
            experiment.path,
            trainable=trainable,
            resume_errored=True,
            storage_filesystem=_tune_filesystem(experiment),
        ).fit()
    searcher = make_searcher(
        space,
        METRIC,
        config.seed,
        search.study_storage or "",
        study_name,
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=BudgetSearcher(searcher, experiment.child(STATE_FILE)) if budget else searcher,
            scheduler=ASHAScheduler(
                time_attr="iteration",
                metric=METRIC,
                mode="max",
                max_t=search.max_iterations,
                grace_period=grace_iterations(search),
            ),
            num_samples=search.trials or -1,  # -1: no cap (a time budget ends the search)
            # A budgeted search queues no trial beyond those that can start at once: none starts late.
            max_concurrent_trials=search.max_concurrent or (cluster_slots(search.resources) if budget else None),
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=config.tune_location.path,
            storage_filesystem=_tune_filesystem(config.tune_location),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # Every checkpoint is kept until the search ends: Tune saves its experiment state
            # only every few seconds, so after a SIGKILL it may name a checkpoint that a
            # num_to_keep policy had already deleted, and that trial could not be restored.
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=METRIC, checkpoint_score_order="max"),
            callbacks=[
                ProgressLines(search.trials, search.families, search.points_to_evaluate, space.warm_queued),
                TrialRunEnds(config.tracking.uri, experiment_id, parent_run_id, search.max_iterations),
            ],
            verbose=0,
        ),
    )
    return tuner.fit()


def _space(config: Config) -> ConditionalSpace:
    search = config.search
    return define_by_run(search.families, search.fixed, search.points_to_evaluate, search.backbones)


def _failed_attempts(experiment: Location) -> dict[str, int | None]:
    """Trial id -> failed attempts, from Tune's saved state; ``None`` for a trial not finished.

    Only the saved state (what ``--resume`` restores) tells an interrupted search from a
    finished one: the ResultGrid marks the trials Tune stops on Ctrl+C TERMINATED.
    """
    from ray.tune import ExperimentAnalysis

    return {
        t.trial_id: t.num_failures if t.status in ("TERMINATED", "ERROR") else None
        for t in ExperimentAnalysis(experiment.path, storage_filesystem=_tune_filesystem(experiment)).trials
    }


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish_trials(
    grid, client, experiment_id: str, parent_run_id: str, config: Config, attempts: Mapping[str, int | None]
) -> list[TrialRecord]:
    """One record per trial; each child run gets its artifacts and a final status."""
    runs = tracking.child_runs(client, experiment_id, parent_run_id)
    experiment = config.experiment_location
    trials = []
    for result in grid:
        trial_dir = experiment.at(result.path)
        trial_id = trial_dir.name.removeprefix("trial_")
        run = runs.get(trial_id)
        record = _trial_record(result, trial_id, run.info.run_id if run else None, trial_dir, config, attempts)
        _prune_checkpoints(trial_dir, keep={record.checkpoint, record.final_checkpoint})
        if run is not None:
            _log_trial_artifacts(client, record, result, chance=1 / config.episodes.train.ways)
            if run.info.status == "RUNNING":  # else it ended with its trial (pipeline.trial_runs)
                client.set_terminated(run.info.run_id, "FAILED" if record.error else "FINISHED")
        trials.append(record)
    for trial_id in runs.keys() - {t.trial_id for t in trials}:
        client.set_tag(runs[trial_id].info.run_id, "learn2tune.note", LOST_TRIAL_NOTE)
    trials.sort(key=lambda t: (t.val_accuracy is None, -(t.val_accuracy or 0.0)))
    return trials


def _trial_record(
    result, trial_id: str, run_id: str | None, trial_dir: Location, config: Config, attempts: Mapping[str, int | None]
) -> TrialRecord:
    """What evaluate needs of one trial; checkpoints as local paths or storage URIs."""
    family = result.config[FAMILY_KEY]
    params = trial_hparams(result.config, config.search.fixed)
    best = max(result.best_checkpoints or [], key=lambda pair: pair[1].get(METRIC, -1.0), default=None)
    metrics = result.metrics or {}
    return TrialRecord(
        trial_id=trial_id,
        index=result.config[INDEX_KEY],
        run_id=run_id,
        family=family,
        params=params,
        hparams=dataclasses.asdict(make_hparams(family, params)),
        val_accuracy=best[1][METRIC] if best else None,
        best_iteration=best[1]["iteration"] if best else None,
        iterations=metrics.get("iteration", 0),
        checkpoint=trial_dir.at(best[0].path).uri if best else None,
        final_checkpoint=trial_dir.at(result.checkpoint.path).uri if result.checkpoint else None,
        error=error_reason(result.error) if result.error else None,
        failed_attempts=attempts.get(trial_id) or 0,
        stop_reason=ERROR
        if result.error
        else stop_reason(metrics.get("iteration", 0), config.search.max_iterations, bool(metrics.get(TIME_BUDGET_KEY))),
        node_id=metrics.get(NODE_KEY),
        device=metrics.get("device"),
    )


def _prune_checkpoints(trial_dir: Location, keep: set[str | None]) -> None:
    """Delete a finished trial's checkpoints except its best and its last."""
    kept = {path.rstrip("/").rsplit("/", 1)[-1] for path in keep if path}
    for name in trial_dir.names():
        if name.startswith("checkpoint_") and name not in kept:
            trial_dir.child(name).delete()


def _log_trial_artifacts(client, record: TrialRecord, result, chance: float) -> None:
    run_id = record.run_id
    client.log_dict(run_id, {k: v for k, v in dataclasses.asdict(record).items() if k != "run_id"}, "trial.json")
    curves = {key: sorted({m.step: m.value for m in client.get_metric_history(run_id, key)}.items()) for key in CURVES}
    if any(curves.values()):
        title = f"{record.family} trial {record.trial_id}"
        client.log_figure(run_id, learning_curve(curves, title, chance), "learning_curve.png")
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as directory:  # downloaded first from an object store
            client.log_artifacts(run_id, directory, "checkpoint")


def _search_result(
    config: Config, fingerprint: str, experiment_id: str, parent_run_id: str, trials: list[TrialRecord]
) -> SearchResult:
    train = config.episodes.train
    return SearchResult(
        experiment=config.name,
        experiment_dir=str(config.experiment_location),
        metric=METRIC,
        dataset=DatasetRef(dir=str(config.dataset_dir), fingerprint=fingerprint),
        val_episodes=ValEpisodes(
            ways=train.ways,
            shots=train.shots,
            query=train.query,
            episodes=config.episodes.val.episodes,
            seed=config.seed,
        ),
        mlflow=MlflowRef(tracking_uri=config.tracking.uri, experiment_id=experiment_id, parent_run_id=parent_run_id),
        trials=trials,
    )


def _log_on_parent(client, parent_run_id: str, result: SearchResult) -> None:
    ranked = [(t, t.val_accuracy) for t in result.trials if t.val_accuracy is not None]
    failed = [t for t in result.trials if t.error]
    tracking.log_metrics(client, parent_run_id, {"trials": len(result.trials), "failed_trials": len(failed)})
    if failed:
        reasons = "\n".join(_failure_line(t) for t in failed)
        client.set_tag(parent_run_id, "failed_trials", reasons[: tracking.MAX_TAG_LENGTH])
    if ranked:  # the runs table's val_accuracy_best column, filled for the parent too: the search's best
        tracking.log_metrics(client, parent_run_id, {"val_accuracy_best": ranked[0][1]})
    for rank, (trial, accuracy) in enumerate(ranked[:3], start=1):
        tracking.log_metrics(client, parent_run_id, {f"best{rank}_val_accuracy": accuracy})
        client.set_tag(parent_run_id, f"best{rank}", f"{trial.family} trial {trial.trial_id} run {trial.run_id}")
    client.log_dict(parent_run_id, result.to_json(), RESULT_FILE)


def _print_summary(result: SearchResult, out: Out) -> None:
    rows = [
        (
            t.trial_id,
            t.family,
            format_params(t.params),
            t.val_accuracy,
            t.best_iteration,
            t.iterations,
            search_artifacts.trial_status(t),
        )
        for t in result.trials
    ]
    headers = ("trial", "family", "params", "val acc", "best at", "iterations", "status")
    out("\n" + format_table(headers, rows))
    errors = [t for t in result.trials if t.error]
    if errors:
        out(f"\n{len(errors)} of {len(result.trials)} trial(s) failed:")
        for trial in errors:
            out(f"  {_failure_line(trial)}")


def _failure_line(trial: TrialRecord) -> str:
    return f"{trial.trial_id} ({trial.family}, {trial.failed_attempts} attempt(s)): {trial.error}"


def _close_open_runs(client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the parent with ``status``; any child run still RUNNING ends KILLED (interrupted)."""
    for run in tracking.child_runs(client, experiment_id, parent_run_id).values():
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(parent_run_id, status)
