"""``manifest.json``: what a dataset directory holds, and the checks that it is one of ours.

Layout (``format_version`` 1)::

    format, format_version, fingerprint, image_shape [C, H, W], image_layout "CHW",
    resize_filter, source {kind, path, digest}, build {the build settings, defaults resolved},
    splits {train|val|test: {file, classes, images, class_names, class_groups, class_counts,
            min_images_per_class, max_images_per_class, bytes, sha256}},
    report {the build report of tasks.build_report; absent from datasets built before it}

The fingerprint is the sha256 of the source digest and the canonical JSON of the build
parameters, so equal fingerprints mean equal datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tasks.errors import DatasetError
from tasks.splits import SPLIT_NAMES
from tasks.storage import Location, local

FORMAT = "learn2tune-episodic-parquet"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(source_digest: str, params: dict[str, Any]) -> str:
    """sha256 hex of the source digest and the canonical JSON of the build parameters."""
    return hashlib.sha256(f"{source_digest}\n{canonical_json(params)}".encode()).hexdigest()


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as it is stored: indented, key-sorted JSON."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``directory/manifest.json`` and fsync it (``directory`` is a staging directory)."""
    with open(directory / MANIFEST_NAME, "w", encoding="utf-8") as f:
        f.write(manifest_text(manifest))
        f.flush()
        os.fsync(f.fileno())


def read_manifest(directory: Path | Location) -> dict[str, Any]:
    """Read and check ``directory/manifest.json`` (a local path or any storage Location);
    :class:`DatasetError` names the file and the field when it is missing, not JSON, foreign,
    too new or inconsistent."""
    where = directory if isinstance(directory, Location) else local(directory)
    path = where.child(MANIFEST_NAME)
    if not where.is_dir():
        raise DatasetError(f"dataset directory {where} does not exist (build it first: `learn2tune build`)")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: {where} is not a learn2tune dataset (build it first)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    _check(manifest, path)
    return manifest


def _field(obj: Any, key: str, kind: type | tuple[type, ...], path: Location, where: str) -> Any:
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{path}: field {name!r} is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetError(f"{path}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def _check(manifest: Any, path: Location) -> None:
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise DatasetError(f"{path}: format is {fmt!r}, expected {FORMAT!r} (not a learn2tune dataset manifest)")
    version = _field(manifest, "format_version", int, path, "")
    if not 1 <= version <= FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {version} is not supported (this code reads 1..{FORMAT_VERSION})")
    _field(manifest, "fingerprint", str, path, "")
    shape = _field(manifest, "image_shape", list, path, "")
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise DatasetError(f"{path}: field 'image_shape' must be [C, H, W] positive ints, got {shape}")
    source = _field(manifest, "source", dict, path, "")
    for key in ("kind", "digest"):
        _field(source, key, str, path, "source")
    _field(manifest, "build", dict, path, "")
    splits = _field(manifest, "splits", dict, path, "")
    for name in SPLIT_NAMES:
        _check_split(_field(splits, name, dict, path, "splits"), path, f"splits.{name}")


def _check_split(split: dict[str, Any], path: Location, where: str) -> None:
    file = _field(split, "file", str, path, where)
    if Path(file).name != file or file in ("", ".", ".."):
        raise DatasetError(f"{path}: field '{where}.file' must be a plain file name, got {file!r}")
    classes = _field(split, "classes", int, path, where)
    images = _field(split, "images", int, path, where)
    for key in ("bytes", "min_images_per_class", "max_images_per_class"):
        _field(split, key, int, path, where)
    _field(split, "sha256", str, path, where)
    lists = {key: _field(split, key, list, path, where) for key in ("class_names", "class_groups", "class_counts")}
    for key, values in lists.items():
        if len(values) != classes:
            raise DatasetError(
                f"{path}: '{where}.{key}' has {len(values)} entries, expected {classes} ('{where}.classes')"
            )
    counts = lists["class_counts"]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts) or sum(counts) != images:
        raise DatasetError(
            f"{path}: '{where}.class_counts' must be positive ints summing to {images} ('{where}.images')"
        )
    if counts and (min(counts) != split["min_images_per_class"] or max(counts) != split["max_images_per_class"]):
        raise DatasetError(f"{path}: '{where}' min/max_images_per_class disagree with its class_counts")
