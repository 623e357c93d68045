"""Config text: reading the YAML file and the command line's ``--set`` overrides into plain data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError


def parse_assignment(text: str) -> tuple[str, Any]:
    """``section.key=value`` from ``--set`` as a (key, value) pair; the value is a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    return key.strip(), parse_scalar(value)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` and ``1.0e30`` as floats as YAML 1.2 does.

    YAML 1.1 (PyYAML's default) wants a dot and a signed exponent, so a learning rate written
    ``1e-3`` would arrive as the string "1e-3".
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML (``5`` -> 5, ``true`` -> True, ``[1, 5]`` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        return text


def parse_list(text: str) -> list[Any]:
    """A comma-separated command-line list, each item a YAML scalar (``5,20`` -> [5, 20])."""
    return [parse_scalar(item) for item in text.split(",")]


def read_yaml(path: Path) -> dict:
    """The mapping in YAML file ``path`` (YAML 1.2 floats); ConfigError naming the file otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def assign(raw: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``section.key``) in ``raw`` to ``value``, making the sections on the way."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set key {dotted!r} is not a dotted field name")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value
