"""Storage by URI: a local (or NFS) path, ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

:func:`resolve` turns a URI into a :class:`Location`, a pyarrow filesystem and a path in it,
with the few operations the stages need: read and write whole files (a write is atomic: a
temp file renamed locally, one PUT on an object store), list, delete, move, and copy a
directory to or from the local disk. Local paths take the plain-file code paths they always
had, so their behaviour is unchanged.

S3-compatible endpoints (MinIO, moto, ...) come from ``endpoint_url`` (the config's
``storage.endpoint_url``), else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials and
region from the standard AWS variables. An unknown scheme is a :class:`StorageError`, never a
local folder named ``s3:``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from tasks import atomic

REMOTE_SCHEMES = ("s3", "gs", "gcs")
CONNECT_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 30
MAX_ATTEMPTS = 3


class StorageError(ValueError):
    """A storage URI that cannot be used: unsupported scheme, missing bucket, unreachable endpoint."""


def scheme_of(uri: str) -> str:
    """The URI's scheme (``""`` for a plain path; ``file`` counts as plain)."""
    if "://" not in uri:
        return ""
    scheme = urlsplit(uri).scheme.lower()
    return "" if scheme == "file" else scheme


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store (``s3://``, ``gs://``) rather than a local path."""
    return scheme_of(uri) != ""


def check_scheme(uri: str, field: str) -> None:
    """:class:`StorageError` naming ``field`` unless ``uri`` is a local path, s3:// or gs://."""
    scheme = scheme_of(uri)
    if scheme and scheme not in REMOTE_SCHEMES:
        raise StorageError(
            f"{field}: unsupported storage scheme {scheme!r} in {uri!r}; use a local path, "
            "s3://bucket/prefix or gs://bucket/prefix"
        )
    if scheme and not urlsplit(uri).netloc:
        raise StorageError(f"{field}: {uri!r} names no bucket; expected {scheme}://bucket/prefix")


def endpoint(endpoint_url: str | None, environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint in effect: the config's, else the standard AWS variables'."""
    return endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


@dataclass(frozen=True)
class Location:
    """A file or directory in some filesystem: ``uri`` for messages and records, ``path`` in ``filesystem``."""

    uri: str
    filesystem: pafs.FileSystem
    path: str
    endpoint: str | None = None  # an S3 endpoint override, for messages

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> Location:
        parent_uri = self.uri.rstrip("/").rsplit("/", 1)[0]
        return dataclasses.replace(self, uri=parent_uri, path=str(PurePosixPath(self.path).parent))

    def child(self, *names: str) -> Location:
        joined = "/".join([self.path, *names])
        return dataclasses.replace(self, uri="/".join([self.uri.rstrip("/"), *names]), path=joined)

    def sibling(self, name: str) -> Location:
        return self.parent.child(name)

    def at(self, path: str) -> Location:
        """Another path of the same filesystem (one Tune reports, say), with its URI."""
        return dataclasses.replace(self, uri=path if self.local else f"{scheme_of(self.uri)}://{path}", path=path)

    def __str__(self) -> str:
        return self.uri

    # ------------------------------------------------------------------ queries

    def _type(self) -> pafs.FileType:
        return self.filesystem.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def size(self) -> int:
        return int(self.filesystem.get_file_info(self.path).size)

    def names(self) -> list[str]:
        """The names of the entries directly in this directory (``[]`` when there is none)."""
        if not self.is_dir():
            return []
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(PurePosixPath(info.path).name for info in self.filesystem.get_file_info(selector))

    # ------------------------------------------------------------------ whole files

    def read_bytes(self) -> bytes:
        """The file's bytes; ``FileNotFoundError`` when there is no such file."""
        if self.local:
            return Path(self.path).read_bytes()
        if not self.is_file():
            raise FileNotFoundError(self.uri)
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically: readers see the old content or the new, never half."""
        if self.local:
            atomic.write_file(Path(self.path), lambda f: f.write(data))
            return
        with self.filesystem.open_output_stream(self.path) as stream:  # one object PUT: atomic
            stream.write(data)

    # ------------------------------------------------------------------ directories

    def delete(self) -> None:
        """Delete this file or directory tree; nothing when it does not exist."""
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.filesystem.delete_dir(self.path)
        elif kind == pafs.FileType.File:
            self.filesystem.delete_file(self.path)

    def move_to(self, target: Location) -> None:
        """Rename (local) or copy then delete (object stores, which have no rename) a directory."""
        if self.local:
            os.replace(self.path, target.path)
            return
        pafs.copy_files(self.path, target.path, self.filesystem, self.filesystem)
        self.delete()

    def upload(self, local_dir: Path) -> None:
        """Copy the files of ``local_dir`` (recursively) into this directory."""
        pafs.copy_files(str(local_dir), self.path, pafs.LocalFileSystem(), self.filesystem)

    def download(self, local_dir: Path) -> None:
        """Copy this directory's files (recursively) into ``local_dir``."""
        local_dir.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local_dir), self.filesystem, pafs.LocalFileSystem())


@contextlib.contextmanager
def local_copy(location: Location, prefix: str = "learn2tune-") -> Iterator[Path]:
    """The directory as a local path: itself when local, else a temp download deleted afterwards."""
    if location.local:
        yield Path(location.path)
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        location.download(tmp / location.name)
        yield tmp / location.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local(path: str | Path) -> Location:
    """A local path as a Location (``~`` expanded; ``uri`` keeps the path as given for messages)."""
    given = Path(path).expanduser()
    return Location(str(given), pafs.LocalFileSystem(), given.absolute().as_posix())


def resolve(
    uri: str | Path | Location, endpoint_url: str | None = None, environ: Mapping[str, str] | None = None
) -> Location:
    """The Location ``uri`` names; :class:`StorageError` for a scheme that is not supported."""
    if isinstance(uri, Location):
        return uri
    if isinstance(uri, Path) or not is_remote(str(uri)):
        text = str(uri)
        return local(text.removeprefix("file://") if text.startswith("file://") else text)
    uri = str(uri)
    check_scheme(uri, "storage URI")
    parts = urlsplit(uri)
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    clean = f"{parts.scheme}://{path}"
    if parts.scheme == "s3":
        url = endpoint(endpoint_url, os.environ if environ is None else environ)
        return Location(clean, _s3(url), path, url)
    return Location(clean, pafs.GcsFileSystem(), path)


def _s3(endpoint_url: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem with short timeouts and few retries: a wrong endpoint fails in seconds."""
    return pafs.S3FileSystem(
        endpoint_override=endpoint_url,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        connect_timeout=CONNECT_TIMEOUT_S,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
    )


def check_bucket(location: Location, field: str) -> None:
    """:class:`StorageError` naming ``field`` when the bucket of a remote ``location`` is missing
    or its endpoint cannot be reached; nothing for local paths."""
    if location.local:
        return
    bucket = location.path.split("/", 1)[0]
    where = location.endpoint or "the default endpoint"
    try:
        kind = location.filesystem.get_file_info(bucket).type
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"{field}: cannot reach the storage of {location.uri} at {where}: {reason}") from None
    if kind == pafs.FileType.NotFound:
        raise StorageError(
            f"{field}: bucket {bucket!r} of {location.uri} does not exist at {where}; create it or fix the URI"
        )
