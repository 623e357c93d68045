"""Checksum-verified downloads that never leave a partial file under the final name."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tasks import atomic
from tasks.errors import DatasetError

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """md5 hex digest of a file's bytes."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
    return md5.hexdigest()


def fetch(url: str, dest: Path, md5: str, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` if its md5 is ``md5``; otherwise raise and leave no file.

    Raises :class:`DatasetError` naming the URL when it cannot be reached (no network, HTTP
    error) or when the bytes do not match the checksum.
    """

    def download(out: BinaryIO) -> None:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(f"cannot download {url}: network unreachable or request failed ({reason})") from exc
        if digest.hexdigest() != md5:
            raise DatasetError(f"download of {url} is corrupt: md5 {digest.hexdigest()}, expected {md5}")

    atomic.write_file(dest, download, durable=True)
