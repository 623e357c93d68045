"""Atomic publication of a directory: build it beside the target, fsync, rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(target: Path) -> Path:
    """A fresh hidden directory next to ``target`` (same file system, so a rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def publish_dir(staging: Path, target: Path, *, replace: bool) -> None:
    """Rename the finished ``staging`` directory to ``target``.

    ``target`` may be missing or empty; with ``replace`` a non-empty ``target`` is first moved
    aside and deleted only after the new directory is in place. Raises ``OSError`` when
    ``target`` is non-empty and ``replace`` is false (for example, another build got there first).
    """
    for entry in staging.iterdir():
        fsync_path(entry)
    fsync_path(staging)
    old: Path | None = None
    if replace and target.exists() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.rename(staging, target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

