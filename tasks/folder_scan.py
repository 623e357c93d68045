"""List a class-per-folder tree: which files are candidate images of which class, and why others are not.

Symlinked folders and files are followed. A folder reached twice (a link back to a folder
above it, a link to a folder already listed) is walked once, and a file reached twice (two
links to one target) is taken once, the first in sorted path order; each of those, like every
file that is not an image, is counted under its reason rather than dropped without a word.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tasks.decode import image_extensions
from tasks.errors import DatasetError

NOT_AN_IMAGE = "not an image"
UNREADABLE = "unreadable"
DUPLICATE = "duplicate"
SYMLINK_LOOP = "symlink loop"


@dataclass
class Listing:
    """Class key -> sorted candidate file names, and what was passed over."""

    files: dict[str, list[str]]
    files_seen: int
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> relative paths


def scan(root: Path) -> Listing:
    """Every folder under ``root`` that directly holds image files is a class (key: its relative path)."""
    extensions = image_extensions()
    files: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = defaultdict(list)
    folders = {root.resolve(): "."}  # real folder -> the relative path it was first walked as
    targets: dict[Path, str] = {}  # real file -> the relative path it was first taken as
    seen = 0
    for directory, subdirs, names in os.walk(root, followlinks=True):
        here = Path(directory)
        rel_dir = here.relative_to(root).as_posix()
        subdirs[:] = _new_folders(here, rel_dir, sorted(d for d in subdirs if not d.startswith(".")), folders, skipped)
        images = []
        for name in sorted(names):
            seen += 1
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if name.startswith(".") or not name.lower().endswith(extensions):
                skipped[NOT_AN_IMAGE].append(rel)
                continue
            real = (here / name).resolve()
            if real in targets:
                skipped[DUPLICATE].append(f"{rel} (same file as {targets[real]})")
                continue
            targets[real] = rel
            images.append(name)
        if not images:
            continue
        if rel_dir == ".":
            raise DatasetError(
                f"image folder {root} holds images directly ({images[0]}, ...): put each class in its own sub-folder"
            )
        files[rel_dir] = images
    return Listing(files, seen, dict(skipped))


def _new_folders(
    here: Path, rel_dir: str, names: list[str], folders: dict[Path, str], skipped: dict[str, list[str]]
) -> list[str]:
    """The sub-folders of ``here`` not walked yet; the rest counted as loops or duplicates."""
    keep = []
    for name in names:
        rel = name if rel_dir == "." else f"{rel_dir}/{name}"
        real = (here / name).resolve()
        first = folders.get(real)
        if first is None:
            folders[real] = rel
            keep.append(name)
        elif first == "." or rel_dir == first or rel_dir.startswith(f"{first}/"):
            skipped[SYMLINK_LOOP].append(f"{rel}/ (leads back to {'the root' if first == '.' else first + '/'})")
        else:
            skipped[DUPLICATE].append(f"{rel}/ (same folder as {first}/)")
    return keep
