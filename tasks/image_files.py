"""What the sources backed by image files share: each listed file decoded once, its bytes for the digest.

A subclass (:mod:`tasks.folder`, :mod:`tasks.csv_split`) lists its classes as paths relative to one
image root and says how a class too small for an episode is reported; reading, skipping unreadable
files (``skip_unreadable``), counting conversions and colour images happen here, once per build.
"""

from __future__ import annotations

import abc
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np

from tasks.decode import Unreadable, is_grey, read_image
from tasks.errors import DatasetError
from tasks.folder_scan import UNREADABLE
from tasks.source import Source, Survey

MIN_IMAGES_PER_CLASS = 2  # the smallest episode shows each class once as support, once as query
# Bump when tasks.decode changes what a file becomes, so datasets built by an older decoder (16-bit
# PNGs stored as 255) get a new fingerprint.
DECODER_VERSION = 2


class ImageFileSource(Source):
    """A source whose classes are lists of image files under ``image_root``; :meth:`survey` reads them."""

    skip_hint: ClassVar[str]  # how to get past an unreadable file, after the error's "; "
    fingerprint_params = {"decoder_version": DECODER_VERSION}

    def __init__(
        self,
        image_root: Path,
        listed: dict[str, list[str]],
        skip_unreadable: bool,
        skipped: dict[str, list[str]] | None = None,
        files_seen: int | None = None,
    ) -> None:
        """``listed``: class key -> its files, relative to ``image_root``; ``skipped`` and ``files_seen``:
        what listing them already passed over and looked at (default: nothing, the listed files)."""
        self._image_root = image_root
        self._listed = listed
        self._skip_unreadable = skip_unreadable
        self._skipped_listing = skipped or {}
        self._files_seen = sum(len(files) for files in listed.values()) if files_seen is None else files_seen
        self._readable: dict[str, list[str]] | None = None
        self._survey: Survey | None = None

    def images(self, key: str) -> list[np.ndarray]:
        return [read_image(self._image_root / file)[0] for file in self._files()[key]]

    def survey(self) -> Survey:
        """Decode every listed file once: which are unreadable, which are colour, what was converted."""
        if self._survey is None:
            self._survey = self._read_all()
        return self._survey

    @abc.abstractmethod
    def _check_class_sizes(self, readable: dict[str, list[str]]) -> None:
        """Raise :class:`DatasetError` when a class has fewer than ``MIN_IMAGES_PER_CLASS`` readable files."""

    def _files(self) -> dict[str, list[str]]:
        self.survey()
        assert self._readable is not None
        return self._readable

    def _read_bytes(self, file: str) -> bytes:
        """``file``'s bytes (for the digest); empty for an unreadable one when ``skip_unreadable``."""
        try:
            return (self._image_root / file).read_bytes()
        except OSError as exc:  # a dangling symlink, a file without read permission
            if self._skip_unreadable:
                return b""
            raise DatasetError(f"{self._image_root / file}: cannot read ({exc.strerror}); {self.skip_hint}") from None

    def _read_all(self) -> Survey:
        readable: dict[str, list[str]] = {}
        skipped = {reason: list(paths) for reason, paths in self._skipped_listing.items()}
        conversions: Counter[str] = Counter()
        colour: list[str] = []
        for key in sorted(self._listed):
            readable[key] = []
            for file in self._listed[key]:
                try:
                    array, note = read_image(self._image_root / file)
                except Unreadable as exc:
                    if not self._skip_unreadable:
                        where = self._image_root / file
                        raise DatasetError(f"{where}: not a readable image ({exc}); {self.skip_hint}") from None
                    skipped.setdefault(UNREADABLE, []).append(file)
                    continue
                readable[key].append(file)
                if note:
                    conversions[note] += 1
                if not is_grey(array):
                    colour.append(file)
        self._check_class_sizes(readable)
        self._readable = readable
        images = sum(len(files) for files in readable.values())
        return Survey(self._files_seen, images, skipped, dict(sorted(conversions.items())), colour)
