"""Atomic writes: a file written beside its target and renamed into place; a directory built
beside the target, fsynced and renamed.

Staging directories are named ``.<target>.tmp-<host>-<pid>-<random>`` (and a replaced target
is set aside as ``.<target>.old-<host>-<pid>-<random>``), so a later build can tell the ones a
killed build left behind (:func:`remove_stale`) from those of a build still running.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> None:
    """Create or replace ``path`` with what ``write`` writes into a temporary file beside it, then
    rename: readers see the old file or the new one, never half, and when ``write`` raises nothing
    is left. ``durable`` also fsyncs the file and its directory (what a crash must not undo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def _host() -> str:
    """This machine's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _owned_dir(target: Path, kind: str) -> Path:
    """A fresh hidden ``kind`` directory next to ``target``, named after this host and process."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{_host()}-{os.getpid()}-", dir=target.parent))


def staging_dir(target: Path) -> Path:
    """A fresh hidden directory next to ``target`` (same file system, so a rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return _owned_dir(target, "tmp")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def is_stale(target_name: str, entry_name: str) -> bool:
    """Whether ``entry_name`` is a staging or set-aside entry of ``target_name`` left by a dead
    build on this host (those of running builds, of other hosts, or named otherwise are not)."""
    pattern = rf"\.{re.escape(target_name)}\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+"
    match = re.fullmatch(pattern, entry_name)
    return match is not None and match["host"] == _host() and not _pid_alive(int(match["pid"]))


def remove_stale(target: Path) -> list[Path]:
    """Delete the staging and set-aside directories of ``target`` whose build process has died.

    Only directories named by this host with a pid that no longer exists are removed; those of
    running builds, of other hosts, or named otherwise are left alone. Returns what was removed.
    """
    if not target.parent.is_dir():
        return []
    removed = []
    for entry in sorted(target.parent.iterdir()):
        if not is_stale(target.name, entry.name) or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def staging_name(target_name: str) -> str:
    """A fresh staging name for ``target_name`` in the pattern :func:`is_stale` recognises
    (for object stores, where :func:`staging_dir`'s ``mkdtemp`` does not apply)."""
    return f".{target_name}.tmp-{_host()}-{os.getpid()}-{os.urandom(4).hex()}"


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
        old = _owned_dir(target, "old")
        os.replace(target, old / target.name)
    os.rename(staging, target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
