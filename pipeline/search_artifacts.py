"""What shows a finished search as a whole, logged on its MLflow parent run.

- ``search/trials.json``: the trials table (``log_table``: family, own params, best validation
  accuracy, iterations, status), the runs table's view of every trial in one place;
- ``search/optimisation_history.png``: each trial's best validation accuracy in the order the
  trials were drawn, by family, with the best so far;
- ``search/param_importance_<family>.png``: per family with at least two finished trials and a
  searched knob, fANOVA importance of its knobs for validation accuracy (a family's knobs exist
  only in its own trials, so importance is computed within each family);
- ``search/pareto.png`` and ``search/pareto.json``: validation accuracy against inference latency
  of the trials with a checkpoint, the Pareto front marked (:mod:`pipeline.pareto`);
- the Optuna study (:mod:`pipeline.study`): where it lives, as tags, and a copy as ``optuna/study.db``.

All of it is computed from ``search_result.json``'s trial records (the ranking's figures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline import pareto, study
from pipeline.config import Config
from pipeline.plots import optimisation_history, parameter_importance
from pipeline.records import SearchResult, TrialRecord
from pipeline.space import optuna_distribution, searched_space
from pipeline.table import format_params
from pipeline.trial_stops import ASHA, TIME_BUDGET
from tasks.say import Say as Out

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRIALS_TABLE = "search/trials.json"
HISTORY_PLOT = "search/optimisation_history.png"
IMPORTANCE_PLOT = "search/param_importance_{family}.png"
MIN_TRIALS_FOR_IMPORTANCE = 2


def log_search_artifacts(
    client: MlflowClient, run_id: str, result: SearchResult, config: Config, study_name: str, out: Out
) -> None:
    """The trials table, the history and importance plots and the study, on the parent run ``run_id``."""
    client.log_table(run_id, trials_table(result.trials), TRIALS_TABLE)
    title = f"{result.experiment}: {len(result.trials)} trials"
    client.log_figure(run_id, optimisation_history(history_points(result.trials), title), HISTORY_PLOT)
    for family, importances in family_importances(result.trials, config.search.fixed, config.seed).items():
        scored = sum(1 for t in result.trials if t.family == family and t.val_accuracy is not None)
        figure = parameter_importance(importances, f"{family}: parameter importance (fANOVA, {scored} trials)")
        client.log_figure(run_id, figure, IMPORTANCE_PLOT.format(family=family))
    pareto.log_pareto(client, run_id, result, config, out)
    url = config.search.study_storage or ""
    if not study.has_study(url, study_name):
        out(f"note: Optuna study {study_name} is not in {study.shown_url(url)}; nothing to log of it")
        return
    lost = study.settle_lost_trials(url, study_name)
    if lost:
        out(f"note: {lost} trial(s) of Optuna study {study_name} were lost to a kill and are marked FAIL")
    study.log_study(client, run_id, url, study_name)
    out(f"Optuna study {study_name}: {study.dashboard_command(url)}")


def trial_status(trial: TrialRecord) -> str:
    """``error``, ``ASHA stop`` (cut at a rung), ``time budget`` (ended, with a checkpoint, when the search's
    budget ran out) or ``ok``: the summary's and the trials table's status column."""
    if trial.error:
        return "error"
    return {ASHA: "ASHA stop", TIME_BUDGET: "time budget"}.get(trial.stop_reason or "", "ok")


def trials_table(trials: Sequence[TrialRecord]) -> dict[str, list[Any]]:
    """One row per trial (best first), with only its own family's hyperparameters."""
    return {
        "trial_id": [t.trial_id for t in trials],
        "trial_number": [t.index for t in trials],
        "family": [t.family for t in trials],
        "params": [format_params(t.params) for t in trials],
        "val_accuracy_best": [t.val_accuracy for t in trials],
        "best_iteration": [t.best_iteration for t in trials],
        "iterations": [t.iterations for t in trials],
        "status": [trial_status(t) for t in trials],
        "error": [t.error or "" for t in trials],
        "run_id": [t.run_id or "" for t in trials],
    }


def history_points(trials: Sequence[TrialRecord]) -> dict[str, list[tuple[int, float]]]:
    """Family -> (trial number, best validation accuracy) of its trials that reported one."""
    points: dict[str, list[tuple[int, float]]] = {}
    for trial in sorted(trials, key=lambda t: t.index):
        if trial.val_accuracy is not None:
            points.setdefault(trial.family, []).append((trial.index, trial.val_accuracy))
    return points


def family_importances(
    trials: Sequence[TrialRecord], fixed: Mapping[str, Mapping[str, Any]], seed: int
) -> dict[str, dict[str, float]]:
    """Family -> knob -> fANOVA importance, over the family's trials with a validation accuracy."""
    import optuna

    importances = {}
    for family in dict.fromkeys(t.family for t in trials):
        space = searched_space(family, fixed)
        scored = [t for t in trials if t.family == family and t.val_accuracy is not None]
        if len(scored) < MIN_TRIALS_FOR_IMPORTANCE or not space:
            continue
        family_study = optuna.create_study(direction="maximize")
        distributions = {name: optuna_distribution(d) for name, d in space.items()}
        family_study.add_trials(
            [
                optuna.trial.create_trial(
                    params={name: t.params[name] for name in space},
                    distributions=distributions,
                    value=t.val_accuracy,
                )
                for t in scored
            ]
        )
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        importances[family] = optuna.importance.get_param_importances(family_study, evaluator=evaluator)
    return importances
