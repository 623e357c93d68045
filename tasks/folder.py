"""Image-folder source: every directory that directly holds images is one class.

``root/<class>/*.png`` gives class key ``<class>`` in group ``<class>``; nested layouts such as
``root/<alphabet>/<character>/*.png`` give key ``<alphabet>/<character>`` in group
``<alphabet>`` (the parent folder); each class needs at least two images. Any format Pillow
opens is read (:mod:`tasks.decode`), symlinks are followed (:mod:`tasks.folder_scan`), hidden
files and folders are skipped. Images decode to grayscale (``H x W``) or RGB (``H x W x 3``)
``uint8``, with no inversion. A file Pillow cannot read stops the build with its path, unless
``skip_unreadable`` is set: then it is skipped and counted in the :class:`Survey`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.decode import Unreadable, image_extensions, is_grey, read_image
from tasks.errors import DatasetError
from tasks.folder_scan import UNREADABLE, scan
from tasks.say import Say
from tasks.source import ClassInfo, Source, Survey

if TYPE_CHECKING:
    from tasks.build import BuildSpec

MIN_IMAGES_PER_CLASS = 2  # the smallest episode shows each class once as support, once as query
# Bump when tasks.decode changes what a file becomes, so datasets built by an older decoder (16-bit
# PNGs stored as 255) get a new fingerprint.
DECODER_VERSION = 2


class FolderSource(Source):
    """Classes from the sub-folders of ``root``; every file is read once by :meth:`survey`."""

    kind = "folder"
    path_use = "required"
    path_note = "the root with one sub-folder per class"
    default_channels = "auto"
    settings = ("skip_unreadable",)
    fingerprint_params = {"decoder_version": DECODER_VERSION}

    def __init__(self, root: str | Path, skip_unreadable: bool = False) -> None:
        self._root = Path(root).expanduser()
        if not self._root.is_dir():
            raise DatasetError(f"image folder {self._root} does not exist or is not a directory")
        self._skip_unreadable = skip_unreadable
        self._listing = scan(self._root)
        if not self._listing.files:
            raise DatasetError(
                f"image folder {self._root} holds no classes (expected {self._root}/<class>/<image> "
                f"files of a format Pillow reads: {', '.join(image_extensions()[:12])}, ...)"
            )
        self._readable: dict[str, list[str]] | None = None
        self._survey: Survey | None = None
        self._digest: str | None = None

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> FolderSource:
        return cls(spec.path or "", skip_unreadable=spec.skip_unreadable)

    @property
    def location(self) -> str:
        return str(self._root.resolve())

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(key=key, group=key.rsplit("/", 1)[0]) for key in sorted(self._files())]

    def images(self, key: str) -> list[np.ndarray]:
        return [read_image(self._root / key / name)[0] for name in self._files()[key]]

    def digest(self) -> str:
        """sha256 over each listed image's relative path and bytes (unreadable ones included)."""
        if self._digest is None:
            total = hashlib.sha256()
            for key in sorted(self._listing.files):
                for name in self._listing.files[key]:
                    content = hashlib.sha256(self._read_bytes(key, name)).hexdigest()
                    total.update(f"{key}/{name}\0{content}\n".encode())
            self._digest = total.hexdigest()
        return self._digest

    def survey(self) -> Survey:
        """Decode every listed file once: which are unreadable, which are colour, what was converted."""
        if self._survey is None:
            self._survey = self._read_all()
        return self._survey

    def _files(self) -> dict[str, list[str]]:
        self.survey()
        assert self._readable is not None
        return self._readable

    def _read_bytes(self, key: str, name: str) -> bytes:
        try:
            return (self._root / key / name).read_bytes()
        except OSError as exc:  # a dangling symlink, a file without read permission
            if self._skip_unreadable:
                return b""
            raise DatasetError(f"{self._root / key / name}: cannot read ({exc.strerror}){_SKIP_HINT}") from None

    def _read_all(self) -> Survey:
        readable: dict[str, list[str]] = {}
        skipped = {reason: list(paths) for reason, paths in self._listing.skipped.items()}
        conversions: Counter[str] = Counter()
        colour: list[str] = []
        for key in sorted(self._listing.files):
            readable[key] = []
            for name in self._listing.files[key]:
                try:
                    array, note = read_image(self._root / key / name)
                except Unreadable as exc:
                    if not self._skip_unreadable:
                        raise DatasetError(
                            f"{self._root / key / name}: not a readable image ({exc}){_SKIP_HINT}"
                        ) from None
                    skipped.setdefault(UNREADABLE, []).append(f"{key}/{name}")
                    continue
                readable[key].append(name)
                if note:
                    conversions[note] += 1
                if not is_grey(array):
                    colour.append(f"{key}/{name}")
        self._check_class_sizes(readable)
        self._readable = readable
        seen = self._listing.files_seen
        images = sum(len(names) for names in readable.values())
        return Survey(seen, images, skipped, dict(sorted(conversions.items())), colour)

    def _check_class_sizes(self, readable: dict[str, list[str]]) -> None:
        small = sorted(key for key, names in readable.items() if len(names) < MIN_IMAGES_PER_CLASS)
        if small:
            raise DatasetError(
                f"image folder {self._root}: class {small[0]!r} has only {len(readable[small[0]])} image "
                f"({len(small)} of {len(readable)} classes have fewer than {MIN_IMAGES_PER_CLASS}); every class "
                f"needs at least {MIN_IMAGES_PER_CLASS}, one support and one query image"
            )


_SKIP_HINT = "; remove it, or set data.skip_unreadable: true to skip and count such files"
