"""CSV-split source: the mini-ImageNet / tiered-ImageNet layout of Ravi & Larochelle (2017).

``root/images/<filename>`` (or ``root/<filename>`` when there is no ``images/`` folder) plus
``root/train.csv``, ``root/val.csv`` and ``root/test.csv``, each a header ``filename,label`` and
one ``<filename>,<label>`` row per image. The label is the class key; the CSV a class is listed
in is its split (``data.split: csv``: nothing is drawn at random), so the standard files give
mini-ImageNet's 64 / 16 / 20 classes of 600 images each. A class's images keep their CSV order.

A layout that cannot be that split stops the open with one line naming the file (and line): a
missing CSV, a malformed header or row, a file listed that is not there, the same file listed
twice, a class listed in two splits. Images decode as the folder source's do (:mod:`tasks.decode`);
a file Pillow cannot read stops the build unless ``skip_unreadable`` is set.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tasks.errors import DatasetError
from tasks.image_files import MIN_IMAGES_PER_CLASS, ImageFileSource
from tasks.say import Say
from tasks.source import ClassInfo
from tasks.splits import SPLIT_NAMES

if TYPE_CHECKING:
    from tasks.build import BuildSpec

HEADER = ("filename", "label")
IMAGE_FOLDER = "images"
_LAYOUT = "images/ and train.csv, val.csv, test.csv of filename,label rows (the mini-ImageNet layout)"


@dataclass(frozen=True)
class Row:
    """One listed image: where it was listed (``train.csv`` line 7) and what it is."""

    csv: str
    line: int
    filename: str
    label: str

    @property
    def where(self) -> str:
        return f"{self.csv} line {self.line}"


class CsvSplitSource(ImageFileSource):
    """Classes and their split from ``train.csv`` / ``val.csv`` / ``test.csv`` under ``root``;
    every listed file is read once by :meth:`survey`."""

    kind = "csv-split"
    path_use = "required"
    path_note = f"the folder holding {_LAYOUT}"
    split_methods = ("csv",)
    default_channels = "auto"
    settings = ("skip_unreadable",)
    skip_hint = "remove it from its CSV, or set data.skip_unreadable: true to skip and count such files"

    def __init__(self, root: str | Path, skip_unreadable: bool = False) -> None:
        self._root = Path(root).expanduser()
        if not self._root.is_dir():
            raise DatasetError(f"csv-split folder {self._root} does not exist or is not a directory")
        images = self._root / IMAGE_FOLDER
        self._images = images if images.is_dir() else self._root
        self._rows = {name: _read_csv(self._root, name) for name in SPLIT_NAMES}
        self._partition = _partitions(self._root, self._rows)
        super().__init__(self._images, self._check_files(), skip_unreadable)
        self._digest: str | None = None

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> CsvSplitSource:
        return cls(spec.path or "", skip_unreadable=spec.skip_unreadable)

    @property
    def location(self) -> str:
        return str(self._root.resolve())

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(key=key, group=key, partition=self._partition[key]) for key in sorted(self._files())]

    def digest(self) -> str:
        """sha256 over the three CSVs' bytes and each listed image's name and bytes."""
        if self._digest is None:
            total = hashlib.sha256()
            for name in SPLIT_NAMES:
                total.update(hashlib.sha256((self._root / f"{name}.csv").read_bytes()).digest())
            for key in sorted(self._listed):
                for filename in self._listed[key]:
                    content = hashlib.sha256(self._read_bytes(filename)).hexdigest()
                    total.update(f"{key}\0{filename}\0{content}\n".encode())
            self._digest = total.hexdigest()
        return self._digest

    def _check_files(self) -> dict[str, list[str]]:
        """Class key -> its file names in CSV order; a file listed twice or not there stops the open."""
        listed: dict[str, list[str]] = {}
        first: dict[str, Row] = {}
        for rows in self._rows.values():
            for row in rows:
                if row.filename in first:
                    raise DatasetError(
                        f"{self._root}: {row.filename} is listed twice ({first[row.filename].where} and {row.where}); "
                        "an image belongs to one class of one split"
                    )
                first[row.filename] = row
                if not (self._images / row.filename).is_file():
                    raise DatasetError(
                        f"{self._images / row.filename} (listed in {row.where}) does not exist; "
                        f"the CSVs name images in {self._images}"
                    )
                listed.setdefault(row.label, []).append(row.filename)
        return listed

    def _check_class_sizes(self, readable: dict[str, list[str]]) -> None:
        small = sorted(key for key, names in readable.items() if len(names) < MIN_IMAGES_PER_CLASS)
        if small:
            raise DatasetError(
                f"{self._root}: class {small[0]!r} ({self._partition[small[0]]}.csv) has only "
                f"{len(readable[small[0]])} readable image; every class needs at least {MIN_IMAGES_PER_CLASS}, "
                "one support and one query image"
            )


def _read_csv(root: Path, split: str) -> list[Row]:
    """The rows of ``root/<split>.csv``, checked: header ``filename,label``, two non-empty fields a
    row, file names that stay inside the image folder."""
    name = f"{split}.csv"
    path = root / name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{root}: {name} not found (expected {_LAYOUT})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    lines = csv.reader(text.splitlines())
    header = next(lines, None)
    if header is None or tuple(field.strip() for field in header) != HEADER:
        found = ",".join(header) if header else "nothing"
        raise DatasetError(f"{path}: the header is {found!r}, expected {','.join(HEADER)!r}")
    rows = []
    for line, fields in enumerate(lines, start=2):
        if not fields:
            continue  # a blank line
        if len(fields) != 2 or not all(field.strip() for field in fields):
            raise DatasetError(
                f"{path} line {line}: expected two non-empty fields filename,label, got {','.join(fields)!r}"
            )
        filename, label = (field.strip() for field in fields)
        pure = PurePosixPath(filename)
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetError(f"{path} line {line}: filename {filename!r} must be a relative path inside the images")
        rows.append(Row(name, line, filename, label))
    if not rows:
        raise DatasetError(f"{path} lists no images (only its header); each split needs classes")
    return rows


def _partitions(root: Path, rows: dict[str, list[Row]]) -> dict[str, str]:
    """Class key -> the split whose CSV lists it; a class listed in two CSVs stops the open."""
    partition: dict[str, str] = {}
    first: dict[str, Row] = {}
    for split, listed in rows.items():
        for row in listed:
            known = partition.setdefault(row.label, split)
            if known != split:
                raise DatasetError(
                    f"{root}: class {row.label!r} is listed in {first[row.label].where} and in {row.where}; "
                    f"a class belongs to one split ({known} or {split})"
                )
            first.setdefault(row.label, row)
    return partition
