"""The config checks that span fields or need the learner registry, run once before any stage.

Every hyperparameter value the config names (``search.fixed``, ``search.points_to_evaluate``)
and every bound of the search space left to search is built into its family's dataclass, whose
own ``validate`` refuses what the learner could not use, so a bad value is a one-line error
here rather than a failed Ray trial.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pipeline.config_model import Config, SearchConfig, grace_iterations
from pipeline.errors import ConfigError
from pipeline.study import check_storage_url
from pipeline.time_budget import check_trial_cap, parse_budget
from tasks import storage
from tasks.build import validate_build_spec


def validate(config: Config) -> None:
    """A ConfigError naming the field for the first rule ``config`` breaks."""
    _validate_search(config.search)
    for field, uri in (("workdir", config.workdir), ("data.dir", config.data.dir)):
        try:
            storage.check_scheme(uri or "", field)
        except storage.StorageError as exc:
            raise ConfigError(str(exc)) from None
    if config.search.study_storage:
        check_storage_url(config.search.study_storage)
    if config.search.resources.gpu > 0 and config.device == "cpu":
        raise ConfigError(f"search.resources.gpu is {config.search.resources.gpu:g} but device is 'cpu'")
    _validate_families(config.search)
    try:
        validate_build_spec(config.data.build_spec(config.seed))
    except ValueError as exc:  # the message names the data.<field>
        raise ConfigError(str(exc)) from None


def _validate_search(search: SearchConfig) -> None:
    parse_budget(search.time_budget)
    check_trial_cap(search.trials, search.time_budget)
    grace = search.grace_iterations
    if isinstance(grace, float) and not grace < 1:
        raise ConfigError(
            f"search.grace_iterations must be a count of meta-iterations (an integer) or a fraction of "
            f"search.max_iterations in (0, 1), got {grace!r}"
        )
    if grace_iterations(search) > search.max_iterations:
        raise ConfigError(
            f"search.grace_iterations ({grace}) must be <= search.max_iterations ({search.max_iterations}); "
            "lower it, give it as a fraction of max_iterations (0.25) or leave it unset (a quarter)"
        )
    if search.eval_every > search.max_iterations:
        raise ConfigError(
            f"search.eval_every ({search.eval_every}) must be <= search.max_iterations ({search.max_iterations})"
        )
    if search.checkpoint_every % search.eval_every:
        raise ConfigError(
            f"search.checkpoint_every ({search.checkpoint_every}) must be a multiple of "
            f"search.eval_every ({search.eval_every}): checkpoints are saved with val reports"
        )


def _validate_families(search: SearchConfig) -> None:
    from learners.registry import family_names

    known = family_names()
    names = known if search.families == ("all",) else search.families
    for name in names:
        if name not in known:
            raise ConfigError(
                f"search.families: unknown learner family {name!r}; choose from: 'all', {', '.join(known)}"
                + _did_you_mean(name, known)
            )
    for family, values in search.fixed.items():
        if family not in known:
            raise ConfigError(
                f"search.fixed.{family}: unknown learner family {family!r}; choose from: {', '.join(known)}"
                + _did_you_mean(family, known)
            )
        if not isinstance(values, dict):
            raise ConfigError(f"search.fixed.{family} must be a mapping of hyperparameters, got {values!r}")
        _hparams(f"search.fixed.{family}", family, values)
    _validate_backbones(search, tuple(names))
    for family in names:
        if search.fixed.get(family):
            _validate_bounds(family, search.fixed[family], search.backbones)
    _validate_points(search, tuple(names))


def _did_you_mean(name: str, known: list[str]) -> str:
    """``; did you mean 'maml'?`` for a near miss (``mamll``), else nothing."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _validate_backbones(search: SearchConfig, families: tuple[str, ...]) -> None:
    """``search.backbones`` names registered backbones and leaves every searched family one."""
    from learners.backbones import backbone_names
    from pipeline.space import DEFAULT_BACKBONES, backbones_in_play

    known = backbone_names()
    for name in search.backbones:
        if name not in (*known, "all"):
            raise ConfigError(
                f"search.backbones: unknown backbone {name!r}; choose from: 'all', {', '.join(known)}"
                f"{_did_you_mean(name, list(known))}"
            )
    if search.backbones == DEFAULT_BACKBONES:  # every family allows Conv-4: no learner module needed
        return
    backbones = known if search.backbones == ("all",) else search.backbones
    for family in families:
        try:
            backbones_in_play(family, search.fixed, backbones)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _validate_bounds(family: str, fixed: Mapping[str, Any], backbones: tuple[str, ...]) -> None:
    """Every value the search may draw for a knob, with the ``fixed`` ones, is one the family accepts.

    Each bound (a range's ends, every choice) is tried with the other knobs at their defaults, so
    a fixed value that rules out part of a searched range (Meta-SGD's ``alpha_low`` above the
    lowest ``alpha_high``) is refused here rather than failing the trials that draw it. Without
    fixed values the declared bounds are the code's own (tests/test_learners_common.py checks
    them), so a config that fixes nothing needs no learner module (nor torch) to load.
    """
    from learners.backbones import backbone_names
    from learners.space import Choice
    from pipeline.space import searched_space

    every = backbone_names() if backbones == ("all",) else backbones
    for param, distribution in searched_space(family, {family: fixed}, every).items():
        bounds = distribution.options if isinstance(distribution, Choice) else (distribution.low, distribution.high)
        for bound in bounds:
            where = f"the search space of {family}.{param} ({distribution}) with search.fixed.{family}"
            _hparams(where, family, {**fixed, param: bound})


def _validate_points(search: SearchConfig, families: tuple[str, ...]) -> None:
    """Each point names a searched family and values its search space can draw (and its family accepts)."""
    from learners.backbones import backbone_names
    from pipeline.space import contains, searched_space

    for family, values in search.points_to_evaluate.items():
        field = f"search.points_to_evaluate.{family}"
        if family not in families:
            raise ConfigError(f"{field}: {family!r} is not searched; search.families is {', '.join(families)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{field} must be a mapping of searched hyperparameters, got {values!r}")
        backbones = backbone_names() if search.backbones == ("all",) else search.backbones
        space = searched_space(family, search.fixed, backbones)
        for param, value in values.items():
            if param not in space:
                raise ConfigError(
                    f"{field}.{param}: not a searched hyperparameter of {family} (fixed ones are left out); "
                    f"choose from: {', '.join(space)}"
                )
            if not contains(space[param], value):
                raise ConfigError(f"{field}.{param}: {value!r} is outside its search space {space[param]}")
        _hparams(field, family, {**search.fixed.get(family, {}), **values})


def _hparams(field: str, family: str, values: Mapping[str, Any]) -> None:
    """A ConfigError naming ``field`` unless ``values`` build ``family``'s hyperparameters."""
    from learners.registry import HyperparamError, UnknownFamilyError, make_hparams

    try:
        make_hparams(family, values)
    except (HyperparamError, UnknownFamilyError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
