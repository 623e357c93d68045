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
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.decode import image_extensions
from tasks.errors import DatasetError
from tasks.folder_scan import scan
from tasks.image_files import DECODER_VERSION, MIN_IMAGES_PER_CLASS, ImageFileSource
from tasks.say import Say
from tasks.source import ClassInfo

if TYPE_CHECKING:
    from tasks.build import BuildSpec

__all__ = ["DECODER_VERSION", "MIN_IMAGES_PER_CLASS", "FolderSource"]


class FolderSource(ImageFileSource):
    """Classes from the sub-folders of ``root``; every file is read once by :meth:`survey`."""

    kind = "folder"
    path_use = "required"
    path_note = "the root with one sub-folder per class"
    default_channels = "auto"
    settings = ("skip_unreadable",)
    skip_hint = "remove it, or set data.skip_unreadable: true to skip and count such files"

    def __init__(self, root: str | Path, skip_unreadable: bool = False) -> None:
        self._root = Path(root).expanduser()
        if not self._root.is_dir():
            raise DatasetError(f"image folder {self._root} does not exist or is not a directory")
        listing = scan(self._root)
        if not listing.files:
            raise DatasetError(
                f"image folder {self._root} holds no classes (expected {self._root}/<class>/<image> "
                f"files of a format Pillow reads: {', '.join(image_extensions()[:12])}, ...)"
            )
        files = {key: [f"{key}/{name}" for name in names] for key, names in listing.files.items()}
        super().__init__(self._root, files, skip_unreadable, listing.skipped, listing.files_seen)
        self._digest: str | None = None

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> FolderSource:
        return cls(spec.path or "", skip_unreadable=spec.skip_unreadable)

    @property
    def location(self) -> str:
        return str(self._root.resolve())

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(key=key, group=key.rsplit("/", 1)[0]) for key in sorted(self._files())]

    def digest(self) -> str:
        """sha256 over each listed image's relative path and bytes (unreadable ones included)."""
        if self._digest is None:
            total = hashlib.sha256()
            for key in sorted(self._listed):
                for file in self._listed[key]:  # key/name
                    content = hashlib.sha256(self._read_bytes(file)).hexdigest()
                    total.update(f"{file}\0{content}\n".encode())
            self._digest = total.hexdigest()
        return self._digest

    def _check_class_sizes(self, readable: dict[str, list[str]]) -> None:
        small = sorted(key for key, names in readable.items() if len(names) < MIN_IMAGES_PER_CLASS)
        if small:
            raise DatasetError(
                f"image folder {self._root}: class {small[0]!r} has only {len(readable[small[0]])} image "
                f"({len(small)} of {len(readable)} classes have fewer than {MIN_IMAGES_PER_CLASS}); every class "
                f"needs at least {MIN_IMAGES_PER_CLASS}, one support and one query image"
            )
