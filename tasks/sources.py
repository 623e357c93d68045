"""The data-source registry: each ``data.source`` name and the :class:`~tasks.source.Source` subclass
that reads it.

A new source is one module (a ``Source`` subclass; :mod:`tasks.source` says what it declares and
implements) plus one line in ``_SOURCES``. The build, the config's check of ``data.source`` and
``learn2tune build SOURCE`` all take the names from here. A source's module is imported when the
source is first used, so listing the names costs nothing.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.source import Source

# name -> "module:class"
_SOURCES: dict[str, str] = {
    "synthetic": "tasks.synthetic:SyntheticSource",
    "omniglot": "tasks.omniglot:OmniglotSource",
    "folder": "tasks.folder:FolderSource",
    "csv-split": "tasks.csv_split:CsvSplitSource",
}


def source_names() -> tuple[str, ...]:
    """Every registered source, in a stable order (the first is the default)."""
    return tuple(_SOURCES)


def check_source_name(name: object) -> None:
    """``ValueError`` naming ``data.source`` (with the closest name) unless ``name`` is registered."""
    if isinstance(name, str) and name in _SOURCES:
        return
    close = difflib.get_close_matches(name, _SOURCES, n=1) if isinstance(name, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"data.source must be one of {', '.join(_SOURCES)}, got {name!r}{hint}")


def source_class(name: str) -> type[Source]:
    """The ``Source`` subclass registered as ``name`` (its module imported now)."""
    check_source_name(name)
    module, _, attribute = _SOURCES[name].partition(":")
    source = getattr(importlib.import_module(module), attribute)
    if source.kind != name:
        raise TypeError(f"{_SOURCES[name]} is registered as source {name!r} but its kind is {source.kind!r}")
    return source


def offering(split: str) -> list[str]:
    """The registered sources that offer class split ``split`` (``data.split``)."""
    return [name for name in _SOURCES if split in source_class(name).split_methods]
