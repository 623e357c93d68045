"""How a trial stopped, in the words the console, the trial's MLflow run and the search result use.

No Ray here: the search result and the summary table need the words without importing Tune.
"""

from __future__ import annotations

STOP_REASON_TAG = "learn2tune.stop_reason"
DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description
MAX_ITERATIONS, ASHA, ERROR, TIME_BUDGET = "max_iterations", "asha", "error", "time_budget"
BEST_METRIC = "val_accuracy_best"  # the best validation accuracy at a checkpoint: what the ranking uses
MAX_ITERATIONS_KEY = "max_iterations"  # in every Tune result, for the console's wording
TIME_BUDGET_KEY = "time_budget_stop"  # in the result a trial ends on because the search's time budget is spent


def stop_reason(iteration: int, max_iterations: int, by_budget: bool = False) -> str:
    """Why a trial that ended without an error stopped: its maximum, the time budget or ASHA before it."""
    if iteration >= max_iterations:
        return MAX_ITERATIONS
    return TIME_BUDGET if by_budget else ASHA


def stop_wording(iteration: int, max_iterations: int, by_budget: bool = False) -> str:
    """How the console and the run's description say it."""
    reason = stop_reason(iteration, max_iterations, by_budget)
    if reason == TIME_BUDGET:
        return f"ended by the time budget at {iteration} of {max_iterations} iterations (checkpoint saved)"
    if reason == ASHA:
        return f"stopped early by ASHA at {iteration} of {max_iterations} iterations"
    return f"reached the maximum of {max_iterations} iterations"
