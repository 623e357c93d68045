"""Each trial's MLflow run ends when the trial ends, not when the search does.

The driver ends it (:class:`TrialRunEnds`, a Tune callback): a trial that ASHA stops is killed
in its worker and cannot end its own run. How it ended is the run's status, a
``learn2tune.stop_reason`` tag and its description:

- ``max_iterations``: FINISHED, it trained to ``search.max_iterations``;
- ``asha``: FINISHED, "stopped early by ASHA at 100 of 300 iterations";
- ``time_budget``: FINISHED, "ended by the time budget at 150 of 5000 iterations (checkpoint saved)";
- ``error``: FAILED, after its last attempt.

Runs of trials a Ctrl+C interrupts are left to the search, which ends them KILLED.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from pipeline import tracking
from pipeline.trial_stops import (
    BEST_METRIC,
    DESCRIPTION_TAG,
    ERROR,
    STOP_REASON_TAG,
    TIME_BUDGET_KEY,
    stop_reason,
    stop_wording,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


class TrialRunEnds(Callback):
    """Ends a trial's MLflow run as Tune finishes the trial (reached its maximum, stopped by ASHA,
    or failed for good). Holds plain ids only: Tune pickles its callbacks for ``Tuner.restore``."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_iterations: int) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.max_iterations = max_iterations

    @cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "client"}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = int(trial.last_result.get("iteration", 0))
        by_budget = bool(trial.last_result.get(TIME_BUDGET_KEY))
        reason = stop_reason(last, self.max_iterations, by_budget)
        best = trial.last_result.get(BEST_METRIC)
        wording = stop_wording(last, self.max_iterations, by_budget)
        if best is not None:
            wording += f"; best val_accuracy {best:.4f}"
        self._end(trial.trial_id, "FINISHED", reason, wording)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result.get("iteration", 0) if trial.last_result else 0
        self._end(trial.trial_id, "FAILED", ERROR, f"failed after {trial.num_failures} attempt(s) at iteration {last}")

    def _end(self, trial_id: str, status: str, reason: str, description: str) -> None:
        run = tracking.find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id)
        if run is None:  # the trial failed before it could open its run
            return
        tracking.set_tags(self.client, run.info.run_id, {STOP_REASON_TAG: reason, DESCRIPTION_TAG: description})
        self.client.set_terminated(run.info.run_id, status)
