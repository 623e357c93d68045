"""Omniglot source (Lake et al.): 1623 handwritten characters from 50 alphabets, 20 drawers each.

Reads ``images_background.zip`` / ``images_evaluation.zip`` (decoded straight from the zip)
or their extracted folders ``images_background/<Alphabet>/characterNN/*.png``. With no path,
it uses a cache directory, downloading the official archives there (md5-checked) if needed;
files a user supplies are not checksummed, since re-packed archives hold the same images.

Class key ``<set>/<Alphabet>/characterNN`` (``<set>`` is ``images_background`` or
``images_evaluation``), group = alphabet, partition = ``background`` / ``evaluation``.
The PNGs are 1-bit with a white background; images come out with stroke 255 on 0.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.download import fetch, file_md5
from tasks.errors import DatasetError
from tasks.say import Say
from tasks.source import ClassInfo, Source

if TYPE_CHECKING:
    from tasks.build import BuildSpec

SETS = {"images_background": "background", "images_evaluation": "evaluation"}
URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
MD5 = {  # of the official archives; checked on downloads only
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/learn2tune/omniglot`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "learn2tune" / "omniglot"


class _ZipMembers:
    """PNG members of one Omniglot archive."""

    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{path}: not a readable zip archive ({exc})") from exc
        self.names = sorted(n for n in self._zip.namelist() if n.lower().endswith(".png"))

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:  # zlib errors surface as these
            raise DatasetError(f"{self.label}: cannot read member {name} ({exc})") from exc

    def close(self) -> None:
        self._zip.close()


class _FolderMembers:
    """PNG files of one extracted Omniglot set, named as they are inside the archive."""

    def __init__(self, root: Path, set_name: str) -> None:
        self.label = str(root / set_name)
        self._root = root
        self.names = sorted(p.relative_to(root).as_posix() for p in (root / set_name).rglob("*.png"))

    def read(self, name: str) -> bytes:
        try:
            return (self._root / name).read_bytes()
        except OSError as exc:
            raise DatasetError(f"{self._root / name}: cannot read ({exc})") from exc

    def close(self) -> None:
        pass


class OmniglotSource(Source):
    """Omniglot from ``path`` (zips or extracted folders) or, with ``path=None``, from
    ``cache_dir`` (default :func:`default_cache_dir`), downloading into it from ``url`` (a
    template with ``{name}``; point it at a mirror if needed) when the archives are missing."""

    kind = "omniglot"
    path_note = "images_background.zip and images_evaluation.zip, or their extracted folders; unset: download them"
    split_methods = ("random", "by-alphabet")
    class_counts = (172, 423)  # val, test: the Vinyals/ProtoNet split, 1200 train characters (incl. val) / 423

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        cache_dir: Path | None = None,
        url: str = URL,
        progress: Say | None = None,
    ) -> None:
        if path is None:
            root = cache_dir or default_cache_dir()
            _ensure_downloaded(root, url, progress or (lambda _: None))
        else:
            root = Path(path).expanduser()
            if not root.is_dir():
                raise DatasetError(
                    f"Omniglot path {root} is not a directory "
                    f"(expected one holding images_background.zip and images_evaluation.zip)"
                )
        self._root = root
        self._members: dict[str, _ZipMembers | _FolderMembers] = {}
        try:
            for set_name in SETS:
                self._members[set_name] = _open_set(root, set_name)
            self._index = self._build_index()
        except BaseException:
            self.close()
            raise
        self._digest: str | None = None

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> OmniglotSource:
        return cls(spec.path, progress=progress)

    @property
    def location(self) -> str:
        return str(self._root.resolve())

    def _build_index(self) -> dict[str, tuple[ClassInfo, list[str]]]:
        index: dict[str, tuple[ClassInfo, list[str]]] = {}
        for set_name, members in self._members.items():
            found = 0
            for name in members.names:
                parts = name.split("/")
                if len(parts) != 4 or parts[0] != set_name:
                    continue
                key = "/".join(parts[:3])
                if key not in index:
                    index[key] = (ClassInfo(key=key, group=parts[1], partition=SETS[set_name]), [])
                index[key][1].append(name)
                found += 1
            if not found:
                raise DatasetError(f"{members.label}: no {set_name}/<Alphabet>/<character>/*.png images found")
        return index

    def classes(self) -> list[ClassInfo]:
        return [self._index[key][0] for key in sorted(self._index)]

    def images(self, key: str) -> list[np.ndarray]:
        set_name = key.split("/", 1)[0]
        members = self._members[set_name]
        return [_decode(members.read(name), f"{members.label}:{name}") for name in self._index[key][1]]

    def digest(self) -> str:
        """sha256 over every PNG's archive path and bytes: the same for a zip and its extraction."""
        if self._digest is None:
            total = hashlib.sha256()
            for set_name, members in self._members.items():
                for name in members.names:
                    if name.startswith(f"{set_name}/"):
                        total.update(f"{name}\0{hashlib.sha256(members.read(name)).hexdigest()}\n".encode())
            self._digest = total.hexdigest()
        return self._digest

    def close(self) -> None:
        for members in self._members.values():
            members.close()


def _open_set(root: Path, set_name: str) -> _ZipMembers | _FolderMembers:
    archive, folder = root / f"{set_name}.zip", root / set_name
    if archive.is_file():
        return _ZipMembers(archive)
    if folder.is_dir():
        return _FolderMembers(root, set_name)
    raise DatasetError(
        f"{root}: found neither {set_name}.zip nor an extracted {set_name}/ folder "
        f"(expected Omniglot's images_background and images_evaluation, zipped or extracted)"
    )


def _ensure_downloaded(cache: Path, url_template: str, say: Say) -> None:
    """Make ``cache`` hold both official archives with the published md5 (download if needed)."""
    for set_name, md5 in MD5.items():
        target = cache / f"{set_name}.zip"
        if target.is_file() and file_md5(target) == md5:
            continue
        url = url_template.format(name=set_name)
        say(f"downloading {url} -> {target}")
        try:
            fetch(url, target, md5)
        except DatasetError as exc:
            raise DatasetError(
                f"{exc}. Download images_background.zip and images_evaluation.zip yourself and "
                f"pass their directory with --path (data.path)"
            ) from exc


def _decode(data: bytes, label: str) -> np.ndarray:
    """A PNG's bytes as ``uint8 H x W`` with stroke 255 on background 0."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{label}: not a readable image ({exc})") from exc
    return 255 - gray
