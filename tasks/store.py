"""Read a built dataset: the manifest, and each split as one contiguous ``uint8`` array.

Loading a split checks the Parquet file against the manifest (schema, row count, per-class
counts and names, byte size and sha256) and raises :class:`DatasetError` naming the file and
what was expected. Each split is read once per :class:`DatasetStore` and cached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import storage
from tasks.errors import DatasetError
from tasks.manifest import read_manifest
from tasks.parquet_io import SCHEMA, image_array
from tasks.splits import SPLIT_NAMES
from tasks.storage import Location


@dataclass(frozen=True, eq=False)
class SplitStore:
    """One split in memory.

    ``images``: ``uint8 [n, C, H, W]``, read-only, rows sorted by class. Class ``c`` is rows
    ``class_offsets[c]:class_offsets[c + 1]`` (``class_offsets`` has ``num_classes + 1``
    entries), ``class_counts[c]`` of them, named ``class_names[c]`` in group ``class_groups[c]``.
    """

    name: str
    images: np.ndarray
    class_offsets: np.ndarray
    class_counts: np.ndarray
    class_names: list[str]
    class_groups: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def min_class_size(self) -> int:
        return int(self.class_counts.min()) if len(self.class_counts) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def class_images(self, index: int) -> np.ndarray:
        """The images of class ``index``, ``[count, C, H, W]`` (a view)."""
        return self.images[self.class_offsets[index] : self.class_offsets[index + 1]]


class DatasetStore:
    """A dataset directory written by :func:`tasks.build.build_dataset`, on any storage.

    ``path`` is what messages name: the local path (a ``Path``) or the URI of a remote one.
    """

    def __init__(self, location: Location, manifest: dict[str, Any]) -> None:
        self.location = location
        self.path: Path | str = Path(location.uri) if location.local else location.uri
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        c, h, w = manifest["image_shape"]
        self.image_shape: tuple[int, int, int] = (c, h, w)
        self._splits: dict[str, SplitStore] = {}

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (RGB): what every image of the dataset holds (``image_shape[0]``)."""
        return self.image_shape[0]

    @classmethod
    def open(cls, path: str | Path | Location) -> DatasetStore:
        """Open the dataset at ``path`` (a local path, a storage URI or Location), reading and
        checking ``manifest.json`` only (splits load on first use); :class:`DatasetError` if the
        directory or its manifest is missing, corrupt or foreign."""
        location = storage.resolve(path)
        return cls(location, read_manifest(location))

    @property
    def split_names(self) -> list[str]:
        """``train``, ``val``, ``test``, then any other splits the manifest lists."""
        extra = sorted(set(self.manifest["splits"]) - set(SPLIT_NAMES))
        return [*SPLIT_NAMES, *extra]

    def split(self, name: str) -> SplitStore:
        """Split ``name`` (``train``, ``val`` or ``test``), loaded and checked on first use."""
        if name not in self.manifest["splits"]:
            raise DatasetError(f"dataset {self.path} has no split {name!r} (it has {', '.join(self.split_names)})")
        if name not in self._splits:
            self._splits[name] = _load_split(self.location, name, self.manifest["splits"][name], self.image_shape)
        return self._splits[name]


def _load_split(directory: Location, name: str, entry: dict[str, Any], shape: tuple[int, int, int]) -> SplitStore:
    path = directory.child(entry["file"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing (split {name!r} of dataset {directory}; rebuild the dataset)") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    table = _read_table(path, data, entry["bytes"])
    if table.num_rows != entry["images"]:
        raise DatasetError(f"{path}: has {table.num_rows} rows, manifest.json says {entry['images']} images")
    counts = np.asarray(entry["class_counts"], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    _check_classes(path, table, offsets, entry["class_names"])
    image_bytes = int(np.prod(shape))
    column = table.column("image")
    lengths = pc.binary_length(column)
    if column.null_count or (len(column) and pc.min_max(lengths).as_py() != {"min": image_bytes, "max": image_bytes}):
        raise DatasetError(
            f"{path}: every image must be {image_bytes} bytes (image_shape {list(shape)} in manifest.json)"
        )
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        what = "same size, other sha256"
        if len(data) != entry["bytes"]:
            what = f"{len(data)} bytes, manifest.json says {entry['bytes']}"
        raise DatasetError(
            f"{path}: content differs from manifest.json ({what}): the file was modified or belongs to another dataset"
        )
    images = image_array(column, shape)
    images.flags.writeable = False
    return SplitStore(
        name=name,
        images=images,
        class_offsets=offsets,
        class_counts=counts,
        class_names=list(entry["class_names"]),
        class_groups=list(entry["class_groups"]),
    )


def _read_table(path: Location, data: bytes, expected_bytes: int) -> pa.Table:
    """Parse the Parquet bytes and check the schema."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            f"{path}: not a readable Parquet file ({len(data)} bytes, manifest.json expects {expected_bytes}; "
            f"truncated or corrupt?): {exc}"
        ) from exc
    found = {field.name: field.type for field in schema}
    expected = {field.name: field.type for field in SCHEMA}
    if found != expected:
        have = ", ".join(f"{k}: {v}" for k, v in found.items())
        want = ", ".join(f"{k}: {v}" for k, v in expected.items())
        raise DatasetError(f"{path}: wrong schema ({have}), expected columns ({want})")
    try:
        return parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: cannot decode Parquet data (truncated or corrupt?): {exc}") from exc


def _check_classes(path: Location, table: pa.Table, offsets: np.ndarray, names: list[str]) -> None:
    """Check the class labels are ``0..n-1`` in row order with the manifest's counts and names."""
    labels = table.column("class").to_numpy()
    expected = np.repeat(np.arange(len(names), dtype=np.int32), np.diff(offsets))
    if not np.array_equal(labels, expected):
        raise DatasetError(
            f"{path}: class column does not match manifest.json (expected {len(names)} classes with its "
            f"class_counts, rows sorted by class)"
        )
    if len(names):
        found = table.column("class_name").take(pa.array(offsets[:-1])).to_pylist()
        if found != names:
            bad = next(i for i, (a, b) in enumerate(zip(found, names, strict=False)) if a != b)
            raise DatasetError(f"{path}: class {bad} is named {found[bad]!r}, manifest.json says {names[bad]!r}")
