"""The interface every raw image source implements (Omniglot, image folder, synthetic glyphs).

A source is a :class:`Source` subclass registered by name in :mod:`tasks.sources`. Besides
reading its images it declares, as class attributes, how the build treats it: whether it takes
``data.path``, which class splits it offers, its default class counts and channels, the build
settings only it reads, and what else goes into its datasets' fingerprint.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from tasks.say import Say

if TYPE_CHECKING:
    from tasks.build import BuildSpec

PathUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class ClassInfo:
    """One class of a source: its unique ``key``, its ``group`` (an Omniglot alphabet, a parent
    folder, a synthetic alphabet) and, for Omniglot, its ``partition`` (background/evaluation);
    for a ``csv`` split, the split whose CSV lists it (train/val/test)."""

    key: str
    group: str
    partition: str | None = None


@dataclass(frozen=True)
class Survey:
    """What reading a source's files found, before anything is split or stored.

    ``skipped``: reason -> the relative paths passed over for it; ``conversions``: how many
    images each decoding conversion was applied to; ``colour``: the relative paths of images
    that are not grey (three channels that differ somewhere).
    """

    files_seen: int
    images_read: int
    skipped: dict[str, list[str]] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)
    colour: list[str] = field(default_factory=list)


class Source(abc.ABC):
    """A labelled image collection, listed cheaply and loaded one class at a time.

    Images are ``uint8`` numpy arrays, ``H x W`` (grayscale) or ``H x W x 3`` (RGB). A source
    that holds files is a context manager; ``close`` releases them.
    """

    kind: ClassVar[str]  # its name in tasks.sources, recorded in the manifest
    path_use: ClassVar[PathUse] = "optional"  # whether it reads data.path
    path_note: ClassVar[str] = ""  # what data.path is to it, or why it takes none (for the errors)
    split_methods: ClassVar[tuple[str, ...]] = ("random",)  # the data.split values it offers; the first: default
    class_counts: ClassVar[tuple[int | float, int | float]] = (0.15, 0.2)  # default val, test classes
    default_channels: ClassVar[int | str] = 1  # data.channels when unset: 1, 3 or "auto"
    settings: ClassVar[tuple[str, ...]] = ()  # the BuildSpec fields only this source reads
    fingerprint_params: ClassVar[Mapping[str, Any]] = {}  # hashed into its datasets' fingerprints

    @classmethod
    @abc.abstractmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> Source:
        """The source ``spec`` (a validated build spec naming this source) describes."""

    @property
    @abc.abstractmethod
    def location(self) -> str | None:
        """Where the raw data lives (recorded in the manifest), or None for generated data."""

    @abc.abstractmethod
    def classes(self) -> list[ClassInfo]:
        """All classes, sorted by key."""

    @abc.abstractmethod
    def images(self, key: str) -> list[np.ndarray]:
        """The images of class ``key``, in a fixed order."""

    @abc.abstractmethod
    def digest(self) -> str:
        """A sha256 hex digest of the raw content: equal digests mean equal images."""

    def survey(self) -> Survey | None:
        """What reading the raw files found (a source of files reads them all once here); None for
        sources whose images are generated or known grey."""
        return None

    def close(self) -> None:
        """Release open files (nothing to release by default)."""
        return None

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
