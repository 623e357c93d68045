"""Decoding and validating a few-shot request: one row per image, support and query together.

Columns: ``role`` ("support" | "query"), ``label`` (support rows: the class name, any string),
``image`` (a base64-encoded PNG/JPEG string, or a nested list of 0-255 numbers shaped H×W,
H×W×C or C×H×W). Images are converted to the model's channels and size when that is sensible
(any size, gray <-> colour, alpha dropped) and the conversions are reported in
:attr:`Episode.notes`; an image more than twice as long as it is wide is refused, since
stretching it to the model's square would distort it. Needs numpy, pandas and Pillow only, so
any serving front end can reuse it.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from tasks.decode import Unreadable, decode
from tasks.preprocess import prepare

ROLES = ("support", "query")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
CHANNEL_COUNTS = (1, 3, 4)
MAX_ASPECT_RATIO = 2.0  # longer side / shorter side that is still stretched to a square


class RequestError(ValueError):
    """The request is malformed; the message names the row or column and what was expected."""


@dataclass(frozen=True)
class Episode:
    """A decoded request: support images ordered class by class, and the query images."""

    support: np.ndarray  # [ways * shots, C, H, W] uint8
    support_labels: np.ndarray  # [ways * shots] int64, episode class indices
    query: np.ndarray  # [queries, C, H, W] uint8
    class_names: list[str]  # episode class index -> label string
    notes: list[str] = field(default_factory=list)  # conversions made to fit the model, one line each

    @property
    def ways(self) -> int:
        return len(self.class_names)


def parse_episode(frame: pd.DataFrame, image_shape: tuple[int, int, int]) -> Episode:
    """Validate ``frame`` and decode its images to ``image_shape`` (C, H, W)."""
    if not isinstance(frame, pd.DataFrame):
        raise RequestError(f"expected a table of rows (role, label, image), got {type(frame).__name__}")
    missing = [c for c in ("role", "image") if c not in frame.columns]
    if missing:
        raise RequestError(f"missing column(s) {', '.join(missing)}; expected columns role, label, image")
    support_rows: list[tuple[int, Any]] = []  # (position, the frame's row)
    query_rows: list[tuple[int, Any]] = []
    for position, (_, row) in enumerate(frame.iterrows()):
        role = row["role"]
        if role not in ROLES:
            raise RequestError(f"row {position}: role must be 'support' or 'query', got {role!r}")
        (support_rows if role == "support" else query_rows).append((position, row))
    if not support_rows:
        raise RequestError("no support rows: give at least one labelled image per class (role='support')")
    if not query_rows:
        raise RequestError("no query rows: nothing to predict (role='query')")

    labels = [_support_label(position, row) for position, row in support_rows]
    class_names = list(dict.fromkeys(labels))
    if len(class_names) < 2:
        raise RequestError(f"the support set has one class ({class_names[0]!r}); give at least 2 labels")

    index = {name: i for i, name in enumerate(class_names)}
    ordered = sorted(zip(labels, support_rows, strict=True), key=lambda pair: index[pair[0]])
    conversions: Counter[str] = Counter()
    support = np.stack([_decode(row["image"], image_shape, position, conversions) for _, (position, row) in ordered])
    support_labels = np.array([index[label] for label, _ in ordered], dtype=np.int64)
    query = np.stack([_decode(row["image"], image_shape, position, conversions) for position, row in query_rows])
    notes = [f"{count} image(s) {what}" for what, count in conversions.items()]
    return Episode(support, support_labels, query, class_names, notes)


def decode_image(value: Any, image_shape: tuple[int, int, int], row: int) -> np.ndarray:
    """One image as uint8 ``[C, H, W]`` in ``image_shape`` (square), from base64 PNG/JPEG or numbers.

    Resizing and colour conversion are the dataset build's own (``tasks.preprocess.prepare``).
    """
    return _decode(value, image_shape, row, Counter())


def _decode(value: Any, image_shape: tuple[int, int, int], row: int, conversions: Counter[str]) -> np.ndarray:
    """:func:`decode_image`, counting each conversion it makes in ``conversions``."""
    image = _from_base64(value, row) if isinstance(value, str) else _from_numbers(value, row)
    channels, size, _ = image_shape
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise RequestError(
            f"row {row}: image is {height}×{width} pixels, too far from square to stretch to the model's "
            f"{size}×{size}; crop or pad it to a square first"
        )
    gray = image.mode in GRAY_MODES
    try:
        array, _ = decode(image)  # as the dataset build decodes files: 16-bit scaled, alpha onto white
    except Unreadable as exc:
        raise RequestError(f"row {row}: image cannot be decoded ({exc})") from None
    changes = []
    if (height, width) != (size, size):
        changes.append(f"resized from {height}×{width} to {size}×{size}")
    if gray != (channels == 1) or image.mode in ("LA", "RGBA", "P"):
        changes.append(f"converted from {image.mode} to {'grayscale' if channels == 1 else 'RGB'}")
    if changes:
        conversions[", ".join(changes)] += 1
    return prepare(array, size, channels)


def _support_label(position: int, row: pd.Series) -> str:
    label = row.get("label")
    if label is None or (isinstance(label, float) and np.isnan(label)) or str(label) == "":
        raise RequestError(f"row {position}: support rows need a label")
    return str(label)


def _from_base64(text: str, row: int) -> Image.Image:
    try:
        data = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(f"row {row}: image is not a base64-encoded PNG or JPEG") from None
    return image


def _from_numbers(value: Any, row: int) -> Image.Image:
    try:
        array = np.asarray(_plain(value), dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError(f"row {row}: image must be a base64 PNG string or a rectangular list of numbers") from None
    if array.ndim == 3 and array.shape[-1] not in CHANNEL_COUNTS and array.shape[0] in CHANNEL_COUNTS:
        array = array.transpose(1, 2, 0)  # C×H×W -> H×W×C
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or min(array.shape[:2]) < 1:
        raise RequestError(
            f"row {row}: image of shape {list(array.shape)} is not H×W, H×W×C or C×H×W with C in 1, 3, 4"
        )
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
        raise RequestError(f"row {row}: image values must be numbers in 0-255")
    return Image.fromarray(np.rint(array).astype(np.uint8))  # mode L, RGB or RGBA from the shape


def _plain(value: Any) -> Any:
    """Nested sequences (lists, tuples, numpy object arrays from JSON) as nested lists."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_plain(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
