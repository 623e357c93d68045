"""Image-folder source: every directory that directly holds images is one class.

``root/<class>/*.png`` gives class key ``<class>`` in group ``<class>``; nested layouts such as
``root/<alphabet>/<character>/*.png`` give key ``<alphabet>/<character>`` in group
``<alphabet>`` (the parent folder); each class needs at least two images. Hidden files and
folders are skipped. Images decode to grayscale (``H x W``) or RGB (``H x W x 3``) ``uint8``
as stored, with no inversion.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import DatasetError
from tasks.source import ClassInfo, Source

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MIN_IMAGES_PER_CLASS = 2  # the smallest episode shows each class once as support, once as query


class FolderSource(Source):
    """Classes from the sub-folders of ``root``."""

    kind = "folder"

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root).expanduser()
        if not self._root.is_dir():
            raise DatasetError(f"image folder {self._root} does not exist or is not a directory")
        self._files = _scan(self._root)
        if not self._files:
            raise DatasetError(
                f"image folder {self._root} holds no classes (expected {self._root}/<class>/<image> "
                f"files with extension {', '.join(EXTENSIONS)})"
            )
        small = sorted(key for key, names in self._files.items() if len(names) < MIN_IMAGES_PER_CLASS)
        if small:
            raise DatasetError(
                f"image folder {self._root}: class {small[0]!r} has only {len(self._files[small[0]])} image "
                f"({len(small)} of {len(self._files)} classes have fewer than {MIN_IMAGES_PER_CLASS}); every class "
                f"needs at least {MIN_IMAGES_PER_CLASS}, one support and one query image"
            )
        self._digest: str | None = None

    @property
    def location(self) -> str:
        return str(self._root.resolve())

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(key=key, group=key.rsplit("/", 1)[0]) for key in sorted(self._files)]

    def images(self, key: str) -> list[np.ndarray]:
        return [_decode(self._root / key / name) for name in self._files[key]]

    def digest(self) -> str:
        """sha256 over each image's relative path and bytes."""
        if self._digest is None:
            total = hashlib.sha256()
            for key in sorted(self._files):
                for name in self._files[key]:
                    content = hashlib.sha256((self._root / key / name).read_bytes()).hexdigest()
                    total.update(f"{key}/{name}\0{content}\n".encode())
            self._digest = total.hexdigest()
        return self._digest


def _scan(root: Path) -> dict[str, list[str]]:
    """Class key -> sorted image file names, for every folder under ``root`` holding images."""
    files: dict[str, list[str]] = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        images = sorted(n for n in names if not n.startswith(".") and n.lower().endswith(EXTENSIONS))
        if not images:
            continue
        key = Path(directory).relative_to(root).as_posix()
        if key == ".":
            raise DatasetError(
                f"image folder {root} holds images directly ({images[0]}, ...): put each class in its own sub-folder"
            )
        files[key] = images
    return files


def _decode(path: Path) -> np.ndarray:
    """An image file as ``uint8 H x W`` (grayscale sources) or ``H x W x 3``."""
    try:
        with Image.open(path) as image:
            mode = "L" if image.mode in _GRAY_MODES else "RGB"
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc
