"""The search space as an Optuna define-by-run function: family first, then its own knobs.

Each family's ``search_space`` (``learners.space`` Float/Int/Choice) is suggested under
``"{family}.{param}"`` names, only when that family is drawn, so the space is conditional.
Hyperparameters fixed in the config (``search.fixed``) are not searched. The first trials
cover every family once (the others are queued after the first draw), so a short search
never leaves a family out by chance; a family with a point to evaluate
(``search.points_to_evaluate``, e.g. its paper's values) gets that point as its queued trial,
the knobs the point leaves out drawn by the sampler. Each trial config
also carries ``trial_index`` (Optuna's trial number), from which the trial derives its seed.

Backbones (``search.backbones``, default ``conv4`` alone): a family whose space has ``backbone``
draws it from those listed that it allows; when one remains it is not searched but set, as a
constant of the trial config. The knobs of the backbones out of play for a family (ResNet-12's
``dropblock`` when only Conv-4 is, Conv-4's ``depth`` when only ResNet-12 is) are not searched.
So a config that does not name ResNet-12 searches what it searched before the backbone registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from learners.backbones import backbone_class, backbone_names
from learners.registry import get_family
from learners.space import Choice, Distribution, Float, Int

FAMILY_KEY = "family"
INDEX_KEY = "trial_index"
NODE_KEY = "node_id"  # reported by every trial: the Ray node it ran on
BACKBONE_KEY = "backbone"
DEFAULT_BACKBONES: tuple[str, ...] = ("conv4",)


@dataclass(frozen=True)
class ConditionalSpace:
    """An Optuna define-by-run function over families, each with its searchable knobs.

    A plain picklable object rather than a closure: Tune saves the searcher with the experiment.
    """

    families: tuple[str, ...]
    spaces: dict[str, dict[str, Distribution]]
    points: dict[str, dict[str, Any]]  # family -> values of some of its searched knobs
    constants: dict[str, dict[str, Any]]  # family -> knobs set rather than searched (its one backbone)
    # A warm-started study's (pipeline.warm_start): the past trials before this search's first one,
    # and the families queued with them, which the first trial's coverage queue leaves out.
    offset: int = 0
    warm_queued: tuple[str, ...] = ()

    def __call__(self, trial: Any) -> dict[str, Any]:
        family = trial.suggest_categorical(FAMILY_KEY, list(self.families))
        index = trial.number - self.offset
        if index == 0:  # every family gets a trial before the sampler has the say
            covered = (
                queued_families(self.families, family, self.points)
                if not self.warm_queued
                else [other for other in self.families if other not in self.warm_queued]
            )
            for other in covered:
                values = {f"{other}.{param}": value for param, value in self.points.get(other, {}).items()}
                trial.study.enqueue_trial({FAMILY_KEY: other, **values})
        for param, distribution in self.spaces[family].items():
            _suggest(trial, f"{family}.{param}", distribution)
        constants = {f"{family}.{param}": value for param, value in self.constants[family].items()}
        return {INDEX_KEY: index, **constants}  # the index: 0, 1, 2, ... in the order this search draws trials


def queued_families(families: Sequence[str], drawn: str, points: Mapping[str, Any]) -> list[str]:
    """The families queued after the first trial drew ``drawn``, in the order trials take them:
    every other family, and ``drawn`` again when it has a point to evaluate."""
    return [family for family in families if family in points or family != drawn]


def untried_families(
    families: Sequence[str], drawn: str, points: Mapping[str, Any], trials: int, warm_queued: Sequence[str] = ()
) -> list[str]:
    """The families none of ``trials`` trials gets, when the first one drew ``drawn``; in a
    warm-started search (``warm_queued``, the families queued from past searches, first) the
    queue starts with those, then every family they leave out."""
    if warm_queued:
        order = [*warm_queued, *(family for family in families if family not in warm_queued)]
    else:
        order = [drawn, *queued_families(families, drawn, points)]
    tried = set(order[:trials])
    return [family for family in families if family not in tried]


def define_by_run(
    families: tuple[str, ...],
    fixed: Mapping[str, Mapping[str, Any]],
    points: Mapping[str, Mapping[str, Any]] | None = None,
    backbones: tuple[str, ...] = DEFAULT_BACKBONES,
) -> ConditionalSpace:
    """The conditional space over ``families``, leaving out hyperparameters fixed in the config.

    ``points``: per family, values of searched knobs to evaluate first (checked by the config).
    ``backbones``: the backbones the families that search ``backbone`` draw from (module docstring).
    """
    return ConditionalSpace(
        tuple(families),
        {family: searched_space(family, fixed, backbones) for family in families},
        {family: dict(values) for family, values in (points or {}).items()},
        {family: backbone_constants(family, fixed, backbones) for family in families},
    )


def searched_space(
    family: str, fixed: Mapping[str, Mapping[str, Any]], backbones: tuple[str, ...] = DEFAULT_BACKBONES
) -> dict[str, Distribution]:
    """``family``'s search space less the knobs ``fixed`` sets for it and those of backbones out of play."""
    space = {k: d for k, d in get_family(family).search_space.items() if k not in fixed.get(family, {})}
    playing = backbones_in_play(family, fixed, backbones)
    if not playing:  # a family without a backbone: nothing to narrow
        return space
    unused = {knob for name in backbone_names() for knob in backbone_class(name).knobs} - {
        knob for name in playing for knob in backbone_class(name).knobs
    }
    space = {k: d for k, d in space.items() if k not in unused}
    if BACKBONE_KEY in space:
        if len(playing) > 1:
            space[BACKBONE_KEY] = Choice(playing)
        else:
            del space[BACKBONE_KEY]
    return space


def backbone_constants(
    family: str, fixed: Mapping[str, Mapping[str, Any]], backbones: tuple[str, ...] = DEFAULT_BACKBONES
) -> dict[str, Any]:
    """``{"backbone": name}`` for a family that searches its backbone when ``backbones`` leaves it one."""
    declared = get_family(family).search_space.get(BACKBONE_KEY)
    playing = backbones_in_play(family, fixed, backbones)
    searched = declared is not None and BACKBONE_KEY not in fixed.get(family, {})
    return {BACKBONE_KEY: playing[0]} if searched and len(playing) == 1 else {}


def backbones_in_play(
    family: str, fixed: Mapping[str, Mapping[str, Any]], backbones: tuple[str, ...]
) -> tuple[str, ...]:
    """The backbones ``family``'s trials may use: its fixed one; else those of ``backbones`` its space
    allows, when it searches ``backbone``; else its default; none for a family without a backbone.
    ``ValueError`` when ``backbones`` leaves a family that searches its backbone none."""
    if BACKBONE_KEY in fixed.get(family, {}):
        return (fixed[family][BACKBONE_KEY],)
    learner_cls = get_family(family)
    declared = learner_cls.search_space.get(BACKBONE_KEY)
    if not isinstance(declared, Choice):
        default = getattr(learner_cls.Hyperparams(), BACKBONE_KEY, None)
        return (default,) if default is not None else ()
    playing = tuple(name for name in backbones if name in declared.options)
    if not playing:
        raise ValueError(
            f"search.backbones ({', '.join(backbones)}) leaves {family} no backbone: it searches "
            f"{', '.join(map(str, declared.options))}; add one of them or set search.fixed.{family}.backbone"
        )
    return playing


def contains(distribution: Distribution, value: Any) -> bool:
    """Whether ``value`` is one ``distribution`` can draw."""
    if isinstance(distribution, Choice):
        return value in distribution.options
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, Int) and not float(value).is_integer():
        return False
    return distribution.low <= value <= distribution.high


def trial_hparams(trial_config: Mapping[str, Any], fixed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The hyperparameters of the family a trial config names: its searched knobs plus fixed ones."""
    family = trial_config[FAMILY_KEY]
    prefix = f"{family}."
    searched = {k.removeprefix(prefix): v for k, v in trial_config.items() if k.startswith(prefix)}
    return {**searched, **fixed.get(family, {})}


def optuna_distribution(distribution: Distribution):
    """The Optuna distribution ``pipeline.space`` suggests for ``distribution``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, Float):
        return FloatDistribution(distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, Int):
        return IntDistribution(distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, Choice):
        return CategoricalDistribution(list(distribution.options))
    raise TypeError(f"unsupported search distribution {distribution!r}")


def _suggest(trial: Any, name: str, distribution: Distribution) -> None:
    if isinstance(distribution, Float):
        trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    elif isinstance(distribution, Int):
        trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    elif isinstance(distribution, Choice):
        trial.suggest_categorical(name, list(distribution.options))
    else:
        raise TypeError(f"{name}: unsupported search distribution {distribution!r}")
