"""Concise progress lines while Tune runs (instead of Tune's periodic status tables)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.bar import duration, eta
from pipeline.errors import error_reason
from pipeline.space import FAMILY_KEY, INDEX_KEY, untried_families
from pipeline.table import format_params
from pipeline.time_budget import deadline_of, left_wording
from pipeline.trial_stops import MAX_ITERATIONS_KEY, TIME_BUDGET_KEY, stop_wording

ERROR_FILE = "error.txt"  # Tune's file of a trial's tracebacks, one per failed attempt
ENDED = ("TERMINATED", "ERROR")


class ProgressLines(Callback):
    """One line per trial start, val report, stop and error, printed by the driver; after each
    trial that ends, how many of the search's ``trials`` are done and the ETA (``trials`` None: no
    cap, a time-budgeted search) and, in a budgeted search, how much of the budget is left.

    A failed trial's line gives the reason and where Tune saved the full traceback (Tune's own
    traceback dump is switched off by the search). With fewer trials than ``families``, the first
    trial's start names the families no trial will get. Tune pickles its callbacks with the
    experiment (for ``Tuner.restore``): the clock restarts in ``setup``, which every fit calls.
    """

    def __init__(
        self, trials: int | None, families: Sequence[str], points: Mapping[str, Any], warm_queued: Sequence[str] = ()
    ) -> None:
        self.trials, self.families, self.points = trials, tuple(families), dict(points)
        self.warm_queued = tuple(warm_queued)  # a warm-started search's families queued from past searches
        self._start, self._ended_here = time.monotonic(), 0

    @staticmethod
    def _out(line: str) -> None:
        print(line, flush=True)

    def setup(
        self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        self._start, self._ended_here = time.monotonic(), 0
        if self.trials is not None and self.trials < len(self.families):
            first = (
                "the families queued from past searches go first"
                if self.warm_queued
                else ("the first trial's family is the sampler's draw")
            )
            self._out(
                f"  note: {self.trials} trials for {len(self.families)} families: "
                f"{len(self.families) - self.trials} families will not be tried ({first}, each next trial takes "
                f"one not tried yet); --trials {len(self.families)} (search.trials) tries every family"
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = format_params(
            {k.split(".", 1)[-1]: v for k, v in trial.config.items() if k not in (FAMILY_KEY, INDEX_KEY)}
        )
        self._out(f"  [{trial.trial_id}] start {trial.config.get(FAMILY_KEY)} {params}")
        if trial.config.get(INDEX_KEY) == 0 and self.trials is not None and self.trials < len(self.families):
            left_out = untried_families(
                self.families, trial.config[FAMILY_KEY], self.points, self.trials, self.warm_queued
            )
            self._out(f"  not tried ({self.trials} trials for {len(self.families)} families): {', '.join(left_out)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("device_warning"):  # the trial's first report after it could not use its GPU
            self._out(f"  [{trial.trial_id}] warning: {result['device_warning']}")
        self._out(
            f"  [{trial.trial_id}] iter {result['iteration']:>6}  loss {result['loss']:.3f}  "
            f"train acc {result['train_accuracy']:.3f}  val acc {result['val_accuracy']:.3f}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result
        last = result.get("iteration", 0)
        wording = stop_wording(last, result.get(MAX_ITERATIONS_KEY, last), bool(result.get(TIME_BUDGET_KEY)))
        self._out(f"  [{trial.trial_id}] {wording}")
        self._count(trials, trial)

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
        self._count(trials, trial)

    def _count(self, trials: list, ended: Any) -> None:
        self._ended_here += 1
        done = 1 + sum(1 for t in trials if t is not ended and t.status in ENDED)
        budget = left_wording(deadline_of(t.last_result for t in trials), time.time())
        self._out(trials_done_line(done, self.trials, time.monotonic() - self._start, self._ended_here, budget))


def trials_done_line(done: int, total: int | None, elapsed: float, ended_here: int, budget: str = "") -> str:
    """``3 of 8 trials done, 1m20s elapsed, ETA 2m13s``; the ETA at the pace of this session's
    ``ended_here`` trials (a resumed search counts the trials an earlier one finished as done).
    Uncapped (a time budget, ``budget``: ``budget 12m04s left``): ``3 of ? trials done, ...``."""
    left = 0 if total is None else total - done
    pace = f", ETA {duration(eta(elapsed, ended_here, ended_here + left))}" if left > 0 else ""
    budget = f", {budget}" if budget else ""
    return f"  {done} of {'?' if total is None else total} trials done, {duration(elapsed)} elapsed{pace}{budget}"


def _reason(trial: Any) -> str:
    """The last line of the trial's latest error, from the error file Tune has just appended to
    on the driver (the copy in the experiment directory is synced later)."""
    path = Path(trial.error_file) if trial.error_file else None
    return error_reason(path.read_text()) if path and path.is_file() else "unknown error"


class _DropTuneHints(logging.Filter):
    """Drops Tune's ``Tuner.restore(...)`` hint and its warnings about trials that never reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Experiment has been interrupted", "Failed to fetch metrics"))


@contextlib.contextmanager
def quiet_tune_hints() -> Iterator[None]:
    """While a search runs and is read back: no Tune advice meant for ``Tuner`` users. After Ctrl+C
    Tune tells them to call ``Tuner.restore(...)`` and warns that the trials it had not started yet
    have no results; learn2tune prints its own ``--resume`` command instead."""
    loggers = [logging.getLogger(name) for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")]
    hints = _DropTuneHints()
    for logger in loggers:
        logger.addFilter(hints)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hints)
