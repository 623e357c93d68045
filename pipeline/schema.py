"""The config vocabulary on pydantic 2: section models, value types, and one-line errors.

A section is a frozen :class:`Section` (unknown keys refused, null taken as all defaults) whose
fields are plain annotated types (``Annotated[int, Strict(), Field(ge=2)]``, or the aliases
below). :func:`parse` validates data against a section and turns pydantic's first error into
one ConfigError line that names the dotted field and says what it allows, suggesting the
closest field for an unknown key.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeGuard, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic.fields import FieldInfo

from pipeline.errors import ConfigError

T = TypeVar("T")
S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A config section: frozen, every field defaulted, unknown keys refused, null = all defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _null_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data


def _one_or_more(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else [value]


def _null_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _null_is_blank(value: Any) -> Any:
    return "" if value is None else value


Integer = Annotated[int, Strict()]  # not a bool, not 2.0
Number = Annotated[int, Strict()] | Annotated[float, Strict()]  # kept as given (1 stays an int), not a bool
Count = Annotated[Integer, Field(ge=1)]
Boolean = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1)]
# A text the resolve step fills in when it is left out, null or "" (so stages always read a str).
Derived = Annotated[str, BeforeValidator(_null_is_blank), Strict()]
Table = Annotated[dict[Any, Any], BeforeValidator(_null_is_empty)]  # free keys, checked by whoever knows them
ListOf = Annotated[tuple[T, ...], BeforeValidator(_one_or_more), Field(min_length=1)]  # one value: a list of one
ListOrEmpty = Annotated[tuple[T, ...], BeforeValidator(_one_or_more)]


def parse(model: type[S], data: Any, where: str = "") -> S:
    """An instance of section ``model`` from ``data`` (a mapping or None), every value checked."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Unknown keys first: a misspelt key also leaves the value it meant unset.
        first = min(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise ConfigError(_one_line(model, data, first, where)) from None


def _one_line(model: type[BaseModel], data: Any, error: Mapping[str, Any], where: str) -> str:
    """``<dotted field> must be <what it allows>, got <value>`` for pydantic's ``error``."""
    section: type[BaseModel] = model
    path = [where] if where else []
    value = data
    for key in error["loc"]:
        name = str(key)
        if name not in section.model_fields:
            allowed = list(section.model_fields)
            return _unknown_key(".".join([*path, name]), ".".join(path), name, allowed)
        field = section.model_fields[name]
        path.append(name)
        value = value.get(name) if isinstance(value, Mapping) else None
        annotation = field.annotation
        if not _is_section(annotation):
            return f"{'.'.join(path)} must be {describe(field)}, got {value!r}"
        section = annotation
    if error["type"] == "value_error":  # a section's own check; its message names the field
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return f"{'.'.join(path) or 'the config'} must be a mapping, got {value!r}"


def describe(field: FieldInfo) -> str:
    """What ``field`` allows, in words: ``an integer >= 2``, ``null or one of 'a', 'b'``..."""
    return field.description or _describe(field.annotation, tuple(field.metadata))


def _describe(annotation: Any, constraints: tuple[Any, ...]) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        for item in get_args(annotation)[1:]:
            if isinstance(item, FieldInfo) and item.description:
                return item.description
        base, found = _unwrapped(annotation)
        return _describe(base, (*constraints, *found))
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        if {_unwrapped(arg)[0] for arg in options} == {int, float}:  # a Number
            text = "a number" + "".join(_bounds((*constraints, *_unwrapped(options[0])[1])))
        else:
            text = " or ".join(_describe(arg, ()) for arg in options)
        return f"null or {text}" if len(options) < len(get_args(annotation)) else text
    if origin is tuple:
        empty = not any(getattr(c, "min_length", 0) for c in constraints)
        return f"a {'' if empty else 'non-empty '}list, each {_describe(get_args(annotation)[0], ())}"
    if origin is Literal:
        return "one of " + ", ".join(repr(option) for option in get_args(annotation))
    if origin is dict or _is_section(annotation):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(annotation, str(annotation)) + "".join(_bounds(constraints))


def _unwrapped(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """The type inside ``Annotated`` layers, and their constraints."""
    found: tuple[Any, ...] = ()
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        found += tuple(m for item in extra for m in (item.metadata if isinstance(item, FieldInfo) else [item]))
    return annotation, found


def _bounds(constraints: tuple[Any, ...]) -> list[str]:
    """`` >= 2``, `` > 0``: pydantic's ``Field(ge=..., gt=...)`` constraints (annotated_types' Ge, Gt)."""
    bounds = []
    for c in constraints:
        for name, sign in (("ge", ">="), ("gt", ">")):
            if getattr(c, name, None) is not None:
                bounds.append(f" {sign} {getattr(c, name):g}")
    return bounds


def _is_section(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unknown_key(path: str, where: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"{path} is not a field; did you mean {f'{where}.' if where else ''}{close[0]}?"
    return f"{path} is not a field; allowed: {', '.join(allowed)}"
