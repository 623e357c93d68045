"""The search space as an Optuna define-by-run function: family first, then its own knobs.

Each family's ``search_space`` (``learners.space`` Float/Int/Choice) is suggested under
``"{family}.{param}"`` names, only when that family is drawn, so the space is conditional.
Hyperparameters fixed in the config (``search.fixed``) are not searched. The first trials
cover every family once (the others are queued after the first draw), so a short search
never leaves a family out by chance. Each trial config
also carries ``trial_index`` (Optuna's trial number), from which the trial derives its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from learners.registry import get_family
from learners.space import Choice, Distribution, Float, Int

FAMILY_KEY = "family"
INDEX_KEY = "trial_index"


@dataclass(frozen=True)
class ConditionalSpace:
    """An Optuna define-by-run function over families, each with its searchable knobs.

    A plain picklable object rather than a closure: Tune saves the searcher with the experiment.
    """

    families: tuple[str, ...]
    spaces: dict[str, dict[str, Distribution]]

    def __call__(self, trial: Any) -> dict[str, int]:
        family = trial.suggest_categorical(FAMILY_KEY, list(self.families))
        if trial.number == 0:  # every family gets a trial before the sampler has the say
            for other in self.families:
                if other != family:
                    trial.study.enqueue_trial({FAMILY_KEY: other})
        for param, distribution in self.spaces[family].items():
            _suggest(trial, f"{family}.{param}", distribution)
        return {INDEX_KEY: trial.number}  # 0, 1, 2, ... in the order trials are drawn


def define_by_run(families: tuple[str, ...], fixed: Mapping[str, Mapping[str, Any]]) -> ConditionalSpace:
    """The conditional space over ``families``, leaving out hyperparameters fixed in the config."""
    spaces = {
        family: {k: d for k, d in get_family(family).search_space.items() if k not in fixed.get(family, {})}
        for family in families
    }
    return ConditionalSpace(tuple(families), spaces)


def trial_hparams(trial_config: Mapping[str, Any], fixed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The hyperparameters of the family a trial config names: its searched knobs plus fixed ones."""
    family = trial_config[FAMILY_KEY]
    prefix = f"{family}."
    searched = {k.removeprefix(prefix): v for k, v in trial_config.items() if k.startswith(prefix)}
    return {**searched, **fixed.get(family, {})}


def _suggest(trial: Any, name: str, distribution: Distribution) -> None:
    if isinstance(distribution, Float):
        trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    elif isinstance(distribution, Int):
        trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    elif isinstance(distribution, Choice):
        trial.suggest_categorical(name, list(distribution.options))
    else:
        raise TypeError(f"{name}: unsupported search distribution {distribution!r}")
