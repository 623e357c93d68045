"""Ray Tune's OptunaSearch on the search's persistent study (:mod:`pipeline.study`).

Ray's OptunaSearch tells Optuna a trial's *last* reported value; the search ranks trials (and
picks their checkpoints) by the *best* one. :class:`BestValueSearch` tells Optuna the best, so
the study, its plots and optuna-dashboard agree with ``search_result.json``, and the sampler
learns from the figure the search selects on. Tune pickles the searcher with its experiment
state (the storage reconnects by URL), so ``--resume`` continues the same study.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class BestValueSearch(OptunaSearch):
    """OptunaSearch that completes each trial with the best value of ``metric`` it reported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._best: dict[str, float] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        self._remember(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune hands a trial's last result (the one it stops on) to on_trial_complete only.
        if result:
            self._remember(trial_id, result)
            result = {**result, self.metric: self._best.get(trial_id)} if trial_id in self._best else result
        super().on_trial_complete(trial_id, result, error)

    def _remember(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            best = self._best.get(trial_id, value)
            self._best[trial_id] = max(best, value) if self.mode == "max" else min(best, value)


def make_searcher(space: Any, metric: str, seed: int, storage_url: str, study_name: str) -> BestValueSearch:
    """The searcher over ``space`` (maximising ``metric``) on the study ``study_name`` at ``storage_url``."""
    from pipeline.study import open_storage

    return BestValueSearch(
        space=space, metric=metric, mode="max", seed=seed, storage=open_storage(storage_url), study_name=study_name
    )
