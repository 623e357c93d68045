"""The family registry: name -> :class:`~learners.base.Learner` subclass, and hyperparameter parsing."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from learners.base import Learner

# Family name -> module that defines it. Modules are imported on first use.
_FAMILY_MODULES: dict[str, str] = {
    "protonet": "learners.protonet",
    "siamese": "learners.siamese",
    "matching": "learners.matching",
    "relation": "learners.relation",
    "maml": "learners.maml",
    "fomaml": "learners.maml",
    "mann": "learners.mann",
    "metanet": "learners.metanet",
    "metasgd": "learners.metasgd",
    "reptile": "learners.reptile",
    "meta_lstm": "learners.meta_lstm",
}


class UnknownFamilyError(ValueError):
    """A family name that is not registered."""


class HyperparamError(ValueError):
    """A hyperparameter a family does not have, or a value of the wrong type."""


def family_names() -> list[str]:
    """Every registered family, in a stable order."""
    return list(_FAMILY_MODULES)


def get_family(name: str) -> type[Learner]:
    """The learner class registered as ``name``; a clear error listing the allowed names."""
    module = _FAMILY_MODULES.get(name)
    if module is None:
        raise UnknownFamilyError(
            f"unknown learner family {name!r}; choose from: {', '.join(family_names())}"
        )
    learner_cls = getattr(importlib.import_module(module), "FAMILIES", {}).get(name)
    if learner_cls is None:
        raise UnknownFamilyError(f"module {module} does not define family {name!r}")
    return learner_cls


def make_hparams(family: str, values: Mapping[str, Any] | None = None) -> Any:
    """Build ``family``'s ``Hyperparams`` from ``values``, rejecting unknown keys, bad types and the
    values the dataclass's own ``validate`` refuses (ranges, choices)."""
    learner_cls = get_family(family)
    fields = {f.name: f for f in dataclasses.fields(learner_cls.Hyperparams)}
    values = dict(values or {})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HyperparamError(
            f"{family} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    coerced = {}
    defaults = learner_cls.Hyperparams()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        coerced[key] = _coerce(family, key, value, expected)
    try:
        return learner_cls.Hyperparams(**coerced)
    except ValueError as exc:  # its validate(): the message starts with the field's name
        raise HyperparamError(f"{family}.{exc}") from None


def _coerce(family: str, key: str, value: Any, expected: type) -> Any:
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, expected):
        return value
    raise HyperparamError(
        f"{family}.{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )
