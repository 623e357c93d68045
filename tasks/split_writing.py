"""Writing one split of a build: each class's images prepared, checked and added to its Parquet
file, with the conversions counted for the build report and progress about every 10%."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.decode import is_grey
from tasks.errors import DatasetError
from tasks.parquet_io import SplitWriter
from tasks.preprocess import prepare, rotated
from tasks.say import Say, Tally
from tasks.source import ClassInfo, Source
from tasks.split_check import EpisodeNeed, check_class_images


class Ticker:
    """Reports progress about every 10% of the classes processed, or every class to ``tally``."""

    def __init__(self, total: int, say: Say, tally: Tally | None = None) -> None:
        self.total, self.done, self._say, self._tally = total, 0, say, tally
        self._step = max(1, total // 10)

    def tick(self) -> None:
        self.done += 1
        if self._tally is not None:
            self._tally(self.done, self.total)
        elif self.done % self._step == 0 or self.done == self.total:
            self._say(f"processed {self.done}/{self.total} classes ({round(100 * self.done / self.total)}%)")


class SplitWriting:
    """Writes the splits of one build, checking each class against the episodes its split must
    supply and counting the conversions ``prepare`` applies (resizing, colour changes)."""

    def __init__(
        self,
        source: Source,
        image_shape: tuple[int, int, int],
        rotations: bool,
        needs: Sequence[EpisodeNeed],
        where: str,
        conversions: Counter[str],
    ) -> None:
        self.source, self.image_shape, self.rotations = source, image_shape, rotations
        self.needs, self.where, self.conversions = needs, where, conversions

    def write(self, name: str, members: list[ClassInfo], path: Path, ticker: Ticker) -> dict[str, Any]:
        """Write split ``name`` to ``path`` and return its manifest entry."""
        channels, size, _ = self.image_shape
        groups: list[str] = []
        with SplitWriter(path, self.image_shape) as writer:
            for info in members:
                raw = self.source.images(info.key)
                if not raw:
                    raise DatasetError(f"{self.source.kind} source class {info.key!r} has no images")
                check_class_images(self.needs, name, info.key, len(raw), self.where)
                self._count(raw, size, channels)
                images = np.stack([prepare(image, size, channels) for image in raw])
                for degrees, turned in rotated(images) if self.rotations else [(0, images)]:
                    writer.add_class(info.key if degrees == 0 else f"{info.key}/rot{degrees}", turned)
                    groups.append(info.group)
                ticker.tick()
        data = path.read_bytes()
        counts = writer.class_counts
        return {
            "file": path.name,
            "classes": len(counts),
            "images": sum(counts),
            "class_names": writer.class_names,
            "class_groups": groups,
            "class_counts": counts,
            "min_images_per_class": min(counts),
            "max_images_per_class": max(counts),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def _count(self, raw: list[np.ndarray], size: int, channels: int) -> None:
        for image in raw:
            if image.shape[:2] != (size, size):
                self.conversions[f"resized to {size}x{size}"] += 1
            if channels == 1 and image.ndim == 3 and not is_grey(image):
                self.conversions["colour to grey (ITU-R 601-2 luma)"] += 1
            elif channels == 3 and image.ndim == 2:
                self.conversions["grey to RGB (channel repeated)"] += 1
