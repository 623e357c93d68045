"""The Parquet layout of one split: schema, a streaming writer and a contiguous image reader.

One row per image, rows sorted by class: ``class`` (int32, ``0..n-1`` within the split),
``class_name`` (string), ``image`` (binary: the ``uint8 [C, H, W]`` bytes). Images are
zstd-compressed; row groups hold about :data:`ROW_GROUP_BYTES` of raw image bytes, so a split
reads in a few large sequential chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("class", pa.int32()), ("class_name", pa.string()), ("image", pa.binary())])
ROW_GROUP_BYTES = 32 << 20


class SplitWriter:
    """Append classes to a split file. Use as a context manager: a clean exit flushes the last
    row group, an exception closes the file without it (the caller discards the file)."""

    def __init__(self, path: Path, image_shape: tuple[int, int, int], row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.image_shape = image_shape
        self._image_bytes = int(np.prod(image_shape))
        self._rows_per_group = max(1, row_group_bytes // self._image_bytes)
        self._writer = pq.ParquetWriter(
            path,
            SCHEMA,
            compression="zstd",
            use_dictionary=["class", "class_name"],
            write_statistics=["class"],
        )
        self._pending: list[tuple[str, np.ndarray]] = []
        self._pending_rows = 0
        self.class_names: list[str] = []
        self.class_counts: list[int] = []

    def add_class(self, name: str, images: np.ndarray) -> None:
        """Append one class: ``images`` is ``uint8 [n, C, H, W]`` with ``n >= 1``."""
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape or len(images) == 0:
            raise ValueError(
                f"class {name!r}: expected uint8 [n>=1, {self.image_shape}] images, got {images.dtype} {images.shape}"
            )
        self.class_names.append(name)
        self.class_counts.append(len(images))
        self._pending.append((name, images))
        self._pending_rows += len(images)
        if self._pending_rows >= self._rows_per_group:
            self._flush()

    def _flush(self) -> None:
        """Write the pending classes as row groups of at most ``_rows_per_group`` rows (which
        also keeps each binary chunk far below the 2 GiB limit of its int32 offsets)."""
        if not self._pending:
            return
        first = len(self.class_names) - len(self._pending)
        counts = [len(images) for _, images in self._pending]
        index = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        names = pa.array([name for name, _ in self._pending], pa.string())
        data = np.concatenate([images.reshape(len(images), -1) for _, images in self._pending])
        for start in range(0, len(data), self._rows_per_group):
            rows = data[start : start + self._rows_per_group]
            offsets = np.arange(len(rows) + 1, dtype=np.int32) * self._image_bytes
            columns = [
                pa.array(index[start : start + len(rows)] + first),
                pa.DictionaryArray.from_arrays(pa.array(index[start : start + len(rows)]), names).cast(pa.string()),
                pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(rows)]),
            ]
            self._writer.write_table(pa.table(columns, schema=SCHEMA), row_group_size=len(rows))
        self._pending.clear()
        self._pending_rows = 0

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()


def image_array(column: pa.ChunkedArray, shape: tuple[int, int, int]) -> np.ndarray:
    """A binary column of equal-sized images as one contiguous ``uint8 [n, *shape]`` array.

    A single chunk is viewed without copying; several chunks are copied once into a new
    array. The caller checks beforehand that every value has exactly ``prod(shape)`` bytes.
    """
    size = int(np.prod(shape))
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    if len(chunks) == 1:
        return _chunk_bytes(chunks[0], size).reshape(-1, *shape)
    out = np.empty((len(column), *shape), dtype=np.uint8)
    flat = out.reshape(len(column), size)
    row = 0
    for chunk in chunks:
        flat[row : row + len(chunk)] = _chunk_bytes(chunk, size).reshape(-1, size)
        row += len(chunk)
    return out


def _chunk_bytes(chunk: pa.BinaryArray, size: int) -> np.ndarray:
    """The value bytes of a binary chunk (all values ``size`` bytes long) as a flat view."""
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
    start = int(offsets[chunk.offset])
    return np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[start : start + len(chunk) * size]
