"""The family registry: name -> :class:`~learners.base.Learner` subclass, and hyperparameter parsing.

A new family is one module (a ``Learner`` subclass: :mod:`learners.base` says what it declares
and implements) plus one line in ``_FAMILIES``. Modules are imported when a family is first
used, so listing the names costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from learners.base import Learner

# Family name -> "module:class".
_FAMILIES: dict[str, str] = {
    "protonet": "learners.protonet:ProtoNet",
    "siamese": "learners.siamese:Siamese",
    "matching": "learners.matching:Matching",
    "relation": "learners.relation:Relation",
    "maml": "learners.maml:MAML",
    "fomaml": "learners.maml:FOMAML",
    "mann": "learners.mann:MANN",
    "metanet": "learners.metanet:MetaNet",
    "metasgd": "learners.metasgd:MetaSGD",
    "reptile": "learners.reptile:Reptile",
    "meta_lstm": "learners.meta_lstm:MetaLSTM",
    "finetune": "learners.finetune:FineTune",
}


class UnknownFamilyError(ValueError):
    """A family name that is not registered."""


class HyperparamError(ValueError):
    """A hyperparameter a family does not have, or a value of the wrong type."""


def family_names() -> list[str]:
    """Every registered family, in a stable order."""
    return list(_FAMILIES)


def get_family(name: str) -> type[Learner]:
    """The learner class registered as ``name``; a clear error listing the allowed names."""
    entry = _FAMILIES.get(name)
    if entry is None:
        raise UnknownFamilyError(f"unknown learner family {name!r}; choose from: {', '.join(family_names())}")
    module, _, attribute = entry.partition(":")
    learner_cls = getattr(importlib.import_module(module), attribute, None)
    if learner_cls is None or getattr(learner_cls, "family", None) != name:
        raise TypeError(f"{entry} is registered as family {name!r} but does not define it")
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
            f"{family} has no hyperparameter {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(fields))}"
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
    raise HyperparamError(f"{family}.{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
