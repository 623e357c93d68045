"""Concise progress lines while Tune runs (instead of Tune's periodic status tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.errors import error_reason
from pipeline.space import FAMILY_KEY, INDEX_KEY
from pipeline.table import format_params
from pipeline.trial_stops import MAX_ITERATIONS_KEY, stop_wording

ERROR_FILE = "error.txt"  # Tune's file of a trial's tracebacks, one per failed attempt


class ProgressLines(Callback):
    """One line per trial start, val report, stop and error, printed by the driver.

    A failed trial's line gives the reason and where Tune saved the full traceback (Tune's own
    traceback dump is switched off by the search). Stateless: Tune pickles its callbacks with
    the experiment, for ``Tuner.restore``.
    """

    @staticmethod
    def _out(line: str) -> None:
        print(line, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = format_params(
            {k.split(".", 1)[-1]: v for k, v in trial.config.items() if k not in (FAMILY_KEY, INDEX_KEY)}
        )
        self._out(f"  [{trial.trial_id}] start {trial.config.get(FAMILY_KEY)} {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("device_warning"):  # the trial's first report after it could not use its GPU
            self._out(f"  [{trial.trial_id}] warning: {result['device_warning']}")
        self._out(
            f"  [{trial.trial_id}] iter {result['iteration']:>6}  loss {result['loss']:.3f}  "
            f"train acc {result['train_accuracy']:.3f}  val acc {result['val_accuracy']:.3f}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result.get("iteration", 0)
        self._out(f"  [{trial.trial_id}] {stop_wording(last, trial.last_result.get(MAX_ITERATIONS_KEY, last))}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._out(
            f"  [{trial.trial_id}] failed (attempt {trial.num_failures}): {_reason(trial)}; "
            "restarting from its last checkpoint"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._out(
            f"  [{trial.trial_id}] FAILED after {trial.num_failures} attempt(s): {_reason(trial)} "
            f"(tracebacks: {Path(trial.path) / ERROR_FILE})"
        )


def _reason(trial: Any) -> str:
    """The last line of the trial's latest error, from the error file Tune has just appended to
    on the driver (the copy in the experiment directory is synced later)."""
    path = Path(trial.error_file) if trial.error_file else None
    return error_reason(path.read_text()) if path and path.is_file() else "unknown error"
