"""Turn nested plain data (parsed YAML) into frozen dataclasses, checking every value.

A config dataclass declares each field's rule with :func:`setting`; :func:`parse` walks the
data, rejects keys that are not fields (suggesting the closest one) and values a rule does
not allow, naming the dotted field in every error.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class Rule(Protocol):
    """Validates (and normalises) one value; ``describe`` says what is allowed."""

    def describe(self) -> str: ...

    def accepts(self, value: Any) -> Any: ...


class _Reject(Exception):
    """Raised by a rule's ``accepts`` when a value is not allowed."""


@dataclass(frozen=True)
class Integer:
    minimum: int | None = None

    def describe(self) -> str:
        return "an integer" + (f" >= {self.minimum}" if self.minimum is not None else "")

    def accepts(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Reject
        if self.minimum is not None and value < self.minimum:
            raise _Reject
        return value


@dataclass(frozen=True)
class Number:
    minimum: float = 0.0
    positive: bool = False

    def describe(self) -> str:
        return f"a number {'>' if self.positive else '>='} {self.minimum:g}"

    def accepts(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Reject
        if value < self.minimum or (self.positive and value == self.minimum):
            raise _Reject
        return value


@dataclass(frozen=True)
class Boolean:
    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Reject
        return value


@dataclass(frozen=True)
class Text:
    pattern: str | None = None
    meaning: str = "a string"

    def describe(self) -> str:
        return self.meaning

    def accepts(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise _Reject
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Reject
        return value


@dataclass(frozen=True)
class OneOf:
    options: tuple

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def accepts(self, value: Any) -> Any:
        if isinstance(value, bool) or value not in self.options:
            raise _Reject
        return value


@dataclass(frozen=True)
class Optional:
    rule: Rule
    null: Any = None  # what null parses to ("" for text that load_config fills in when unset)

    def describe(self) -> str:
        return f"null or {self.rule.describe()}"

    def accepts(self, value: Any) -> Any:
        return self.null if value is None else self.rule.accepts(value)


@dataclass(frozen=True)
class ListOf:
    """A list of values, non-empty unless ``empty`` (a single value is taken as a list of one)."""

    rule: Rule
    empty: bool = False

    def describe(self) -> str:
        return f"a {'' if self.empty else 'non-empty '}list, each {self.rule.describe()}"

    def accepts(self, value: Any) -> tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items and not self.empty:
            raise _Reject
        return tuple(self.rule.accepts(item) for item in items)


@dataclass(frozen=True)
class Table:
    """A mapping of free keys (checked later by whoever knows their meaning)."""

    def describe(self) -> str:
        return "a mapping"

    def accepts(self, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _Reject
        return dict(value)


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with ``default``, checked by ``rule`` when parsed."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def section(cls: type) -> Any:
    """A dataclass field holding a nested section, defaulting to that section's defaults."""
    return field(default_factory=cls)


def parse(cls: type[T], data: Any, where: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data`` (a mapping or None), every value checked."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(str(key), list(fields), where))
    values: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        path = f"{where}.{name}" if where else name
        if (section_class := _section_class(f)) is not None:
            values[name] = parse(section_class, value, path)
        else:
            values[name] = check(f.metadata["rule"], value, path)
    return cls(**values)


def check(rule: Rule, value: Any, path: str) -> Any:
    """``value`` as ``rule`` normalises it, or a ConfigError naming ``path``."""
    try:
        return rule.accepts(value)
    except _Reject:
        raise ConfigError(f"{path} must be {rule.describe()}, got {value!r}") from None


def _section_class(f: dataclasses.Field) -> type[DataclassInstance] | None:
    """The dataclass of a nested section (``section(cls)``), or None for a plain setting."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _unknown_key(key: str, allowed: list[str], where: str) -> str:
    path = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        suggestion = f"{where}.{close[0]}" if where else close[0]
        return f"{path} is not a field; did you mean {suggestion}?"
    return f"{path} is not a field; allowed: {', '.join(allowed)}"
