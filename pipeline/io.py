"""Small file helpers: atomic text and JSON writes, and JSON reads with one-line errors.

The JSON helpers take a local ``Path`` or a storage ``Location`` (``s3://...``: one PUT,
which object stores make atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from tasks import storage
from tasks.storage import Location


def write_json_atomic(path: Path | Location, data: Any) -> None:
    """Write ``data`` as JSON to ``path``: never half a file."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (path if isinstance(path, Location) else storage.local(path)).write_bytes(text.encode())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename: never half a file."""
    storage.local(path).write_bytes(text.encode())


def read_json(path: Path | Location, missing_hint: str) -> Any:
    """The JSON in ``path``; a PipelineError with ``missing_hint`` when it does not exist."""
    try:
        return json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist; {missing_hint}") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
