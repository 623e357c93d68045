"""How a trial stopped, in the words the console, the trial's MLflow run and the search result use.

No Ray here: the search result and the summary table need the words without importing Tune.
"""

from __future__ import annotations

STOP_REASON_TAG = "learn2tune.stop_reason"
DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description
MAX_ITERATIONS, ASHA, ERROR = "max_iterations", "asha", "error"
BEST_METRIC = "val_accuracy_best"  # the best validation accuracy at a checkpoint: what the ranking uses
MAX_ITERATIONS_KEY = "max_iterations"  # in every Tune result, for the console's wording


def stop_reason(iteration: int, max_iterations: int) -> str:
    """Why a trial that ended without an error stopped: its maximum, or ASHA before it."""
    return MAX_ITERATIONS if iteration >= max_iterations else ASHA


def stop_wording(iteration: int, max_iterations: int) -> str:
    """How the console and the run's description say it."""
    if stop_reason(iteration, max_iterations) == ASHA:
        return f"stopped early by ASHA at {iteration} of {max_iterations} iterations"
    return f"reached the maximum of {max_iterations} iterations"
