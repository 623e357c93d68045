"""Time-budgeted searches: the ``search.time_budget`` value, the search's clock, and how they are said.

The budget is the search's wall time from its parent run's start to its last trial's end. Once it
is spent the searcher suggests no more trials (:mod:`pipeline.budget_searcher`) and each running
trial, at its next report, saves a checkpoint and ends (:mod:`pipeline.trainable`): the search
stops within one report interval (``search.eval_every`` meta-iterations) of its budget. Tune
queues no trial beyond those the cluster can start at once (``search.max_concurrent``, else the
cluster's room when the search starts), so no trial waits for a slot and starts past the deadline.

``search_state.json`` keeps the clock: ``time_budget_s``, ``session_started`` (epoch seconds) and
``time_used_s``, the time the search's earlier sessions used. ``--resume`` adds the interrupted
session's time, up to Tune's last save of its experiment state (every few seconds), and gives only
what is left of the config's budget (which the resume may change, but not add or drop: Tune restores
the searcher the search began with). No Ray here: the config checks parse budgets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import tracking
from pipeline.bar import duration
from pipeline.errors import ConfigError, PipelineError
from tasks.storage import Location

FORMS = "null or a duration: 90s, 30m, 2h, 1h30m, or a number of seconds"
DEADLINE_KEY = "time_budget_deadline"  # in every Tune result of a budgeted search (epoch seconds)
BUDGET_TAG = "learn2tune.time_budget"
TUNE_STATE_PREFIX = "experiment_state-"  # Tune's experiment state files (TuneController.CKPT_FILE_TMPL)
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (3600, 60, 1)


def parse_budget(value: object) -> float | None:
    """Seconds of ``search.time_budget`` (None: no budget); a ConfigError for anything else."""
    if value is None:
        return None
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        match = _DURATION.fullmatch(text)
        if match and any(match.groups()):
            seconds = float(sum(int(part or 0) * unit for part, unit in zip(match.groups(), _UNITS, strict=True)))
        elif re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"search.time_budget must be {FORMS} (more than 0), got {value!r}")
    return seconds


def check_trial_cap(trials: int | None, budget: object) -> None:
    """``search.trials: null`` (no cap) only with a budget: otherwise the search would never end."""
    if trials is None and budget is None:
        raise ConfigError(
            "search.trials is null (no cap on trials) but search.time_budget is not set; "
            "give a number of trials, a time budget (--time-budget 30m), or both"
        )


@dataclass(frozen=True)
class Budget:
    """A budgeted search's clock in this session (all times epoch seconds)."""

    seconds: float  # the whole search's budget
    used_before: float  # by the search's earlier sessions
    session_started: float

    @property
    def deadline(self) -> float:
        return self.session_started + self.seconds - self.used_before

    def used(self, now: float) -> float:
        return self.used_before + max(0.0, now - self.session_started)


def new_clock(seconds: float | None, now: float) -> dict[str, float | None]:
    """The clock fields of a new search's ``search_state.json`` (a budget of ``seconds``, or None)."""
    return {"time_budget_s": seconds, "session_started": now, "time_used_s": 0.0}


def resumed_clock(
    state: Mapping[str, Any], seconds: float | None, last_saved: float | None, now: float
) -> dict[str, float | None]:
    """The clock fields after ``--resume`` with a budget of ``seconds``: the interrupted session's
    time, up to ``last_saved`` (Tune's last experiment-state save), added to what the sessions before
    it used (:func:`check_resume` first)."""
    check_resume(state, seconds)
    started = state.get("session_started")
    used = float(state.get("time_used_s", 0.0))
    if started is not None and last_saved is not None:
        used += max(0.0, last_saved - float(started))
    return {"time_budget_s": seconds, "session_started": now, "time_used_s": used}


def last_saved(experiment: Location) -> float | None:
    """When Tune last saved the experiment's state in ``experiment`` (epoch seconds), if ever."""
    times = []
    for name in experiment.names():
        if name.startswith(TUNE_STATE_PREFIX):
            mtime = experiment.filesystem.get_file_info(experiment.child(name).path).mtime
            if mtime is not None:
                times.append(mtime.timestamp())
    return max(times, default=None)


def check_resume(state: Mapping[str, Any], seconds: float | None) -> None:
    """An error when a resume would add a budget to a search begun without one, or drop it."""
    before = state.get("time_budget_s")
    if (before is None) != (seconds is None):
        given = f"with a time budget of {duration(seconds)}" if seconds is not None else "without a time budget"
        began = f"with a time budget of {duration(before)}" if before is not None else "without a time budget"
        raise PipelineError(
            f"the interrupted search began {began}; it cannot be resumed {given} "
            "(set search.time_budget as it was, or to another duration if it had one)"
        )


def budget_of(state: Mapping[str, Any]) -> Budget | None:
    """This session's clock, from its ``search_state.json`` fields (None without a budget)."""
    if state.get("time_budget_s") is None:
        return None
    return Budget(float(state["time_budget_s"]), float(state["time_used_s"]), float(state["session_started"]))


def spent(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def deadline_of(results: Iterable[Mapping[str, Any] | None]) -> float | None:
    """The latest deadline the trials reported (a resumed search's trials carry the new one)."""
    return max((float(r[DEADLINE_KEY]) for r in results if r and DEADLINE_KEY in r), default=None)


# ---------------------------------------------------------------- wording


def trials_wording(trials: int | None, budget: Budget | None) -> str:
    """``8 trials``, ``trials until the 5m00s time budget is spent``, ``up to 8 trials in 5m00s``."""
    if budget is None:
        return f"{trials} trials"
    left = f"{duration(budget.seconds - budget.used_before)} left of the {duration(budget.seconds)} time budget"
    return f"up to {trials} trials, {left}" if trials else f"trials until the time budget is spent ({left})"


def left_wording(deadline: float | None, now: float) -> str:
    """``budget 12m04s left`` (or ``budget spent``); "" without a budget."""
    if deadline is None:
        return ""
    return "budget spent" if spent(deadline, now) else f"budget {duration(deadline - now)} left"


def summary_line(budget: Budget, used: float, trials: int, by_budget: int) -> str:
    """``time budget 5m00s: used 5m12s; 14 trials (3 ended by the budget)``."""
    spent = f"time budget {duration(budget.seconds)}: used {duration(used)}"
    return f"{spent}; {trials} trials ({by_budget} ended by the budget)"


def log_on_parent(client: Any, parent_run_id: str, budget: Budget, used: float) -> None:
    """The parent run's ``time_budget_s`` and ``time_used_s`` metrics and its budget tag."""
    tracking.log_metrics(client, parent_run_id, {"time_budget_s": budget.seconds, "time_used_s": used})
    client.set_tag(parent_run_id, BUDGET_TAG, duration(budget.seconds))


def lifted_cap_note(config_trials: int | None) -> str | None:
    """What the CLI says when ``--time-budget`` without ``--trials`` lifts the config's trial cap."""
    if config_trials is None:
        return None
    return (
        f"note: --time-budget without --trials: no cap on trials (the config's search.trials: {config_trials} "
        "is lifted; give --trials to keep one)"
    )
