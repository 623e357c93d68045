"""The searcher of a time-budgeted search: the Optuna searcher, until the budget is spent.

Past the deadline :class:`BudgetSearcher` answers ``Searcher.FINISHED``, so Tune launches no new
trial and the search ends when the running ones have (they end themselves at their next report).
It reads the deadline from ``search_state.json`` once per driver process, not from itself: Tune
restores a search (``--resume``) with the searcher pickled when the search began, whose deadline
would be the first session's; the state file holds the resumed session's budget and clock
(:mod:`pipeline.time_budget`).
Like Tune's own ConcurrencyLimiter it wraps the real searcher as ``searcher``, so Tune saves and
restores that one (Optuna's study) as before.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune.search import Searcher

from pipeline import time_budget
from pipeline.config import Resources
from pipeline.io import read_json
from tasks.storage import Location


def cluster_slots(resources: Resources) -> int:
    """How many trials of ``resources`` the Ray cluster's alive nodes hold at once (at least 1)."""
    import ray

    slots = 0
    for node in (n["Resources"] for n in ray.nodes() if n.get("Alive")):
        fits = [int(node.get("CPU", 0.0) // resources.cpu)]
        if resources.gpu > 0:
            fits.append(int(node.get("GPU", 0.0) // resources.gpu))
        slots += min(fits)
    return max(1, slots)


class BudgetSearcher(Searcher):
    """``searcher``'s suggestions until the deadline in ``state_file`` has passed, then FINISHED."""

    def __init__(self, searcher: Searcher, state_file: Location) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.state_file = searcher, state_file
        self._deadline: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_deadline": None}  # read again by the process that unpickles it

    def deadline(self) -> float:
        if self._deadline is None:
            budget = time_budget.budget_of(read_json(self.state_file, ""))
            self._deadline = math.inf if budget is None else budget.deadline
        return self._deadline

    def suggest(self, trial_id: str) -> Any:  # a config, None (not now) or Searcher.FINISHED
        if time_budget.spent(self.deadline(), time.time()):
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def get_state(self) -> dict:
        return {}  # nothing of its own to restore: the deadline is the state file's

    def set_state(self, state: dict) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
