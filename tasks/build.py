"""Build an episodic Parquet dataset from a source: split classes, preprocess, write, publish.

The dataset directory appears atomically: everything is written into a hidden staging
directory next to ``out_dir`` (manifest last) and renamed into place, so an interrupted build
leaves no directory that passes as a dataset; the next build of the same directory deletes
what a killed one left there. A directory that already holds the same fingerprint is
returned as is. On an object store (``s3://``), which has no rename, the files are staged
under a hidden prefix and the manifest is written last (see :func:`_write_remote`).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import atomic, sources, storage
from tasks.build_report import build_report, choose_channels, report_lines
from tasks.errors import DatasetError
from tasks.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    fingerprint,
    manifest_text,
    read_manifest,
    write_manifest,
)
from tasks.preprocess import RESIZE_FILTER
from tasks.say import Say, Tally
from tasks.source import Source
from tasks.split_check import EpisodeNeed, check_classes
from tasks.split_writing import SplitWriting, Ticker
from tasks.splits import COUNTED, METHODS, SPLIT_NAMES, ClassSplit, split_classes
from tasks.storage import Location

_DATASET_FILES = {MANIFEST_NAME, *(f"{name}.parquet" for name in SPLIT_NAMES)}
CHANNELS = (1, 3, "auto")
_NOT_HASHED = ("path", "skip_unreadable")  # where the source lives; a setting that, off, builds nothing


@dataclass(frozen=True)
class BuildSpec:
    """What to build (the ``data`` section of a config). ``None`` means the source's default."""

    source: str = "synthetic"  # a name in tasks.sources
    path: str | None = None  # zips dir / extracted dir / image folder root
    split: str | None = None  # random | by-alphabet | csv (a method the source offers); None -> its first
    val_classes: int | float | None = None  # None -> the source's class_counts (omniglot 172, else 0.15)
    test_classes: int | float | None = None  # None -> the source's class_counts (omniglot 423, else 0.2)
    rotations: bool = False  # add 90/180/270 degree copies as new classes
    image_size: int = 28
    channels: int | str | None = None  # 1 | 3 | "auto"; None -> the source's default ("auto" for folder, else 1)
    seed: int = 0
    synthetic_classes: int = 400
    synthetic_images_per_class: int = 20
    skip_unreadable: bool = False  # folder: skip (and count) files Pillow cannot read

    def resolved(self) -> BuildSpec:
        """This spec with every ``None`` default replaced by the source's value."""
        source = sources.source_class(self.source)
        val, test = source.class_counts
        split = source.split_methods[0] if self.split is None else self.split
        return dataclasses.replace(
            self,
            split=split,
            val_classes=val if self.val_classes is None and split in COUNTED else self.val_classes,
            test_classes=test if self.test_classes is None and split == "random" else self.test_classes,
            channels=source.default_channels if self.channels is None else self.channels,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_build_spec(spec: BuildSpec) -> None:
    """Raise ``ValueError`` naming the first ``data.<field>`` that is invalid."""
    source = sources.source_class(spec.source)  # ValueError naming data.source
    if spec.path is not None and not isinstance(spec.path, str):
        raise ValueError(f"data.path must be a string path or null, got {type(spec.path).__name__}")
    if source.path_use == "required" and not spec.path:
        raise ValueError(f"data.path is required for source {spec.source!r} ({source.path_note})")
    if source.path_use == "unused" and spec.path is not None:
        raise ValueError(f"data.path does not apply to source {spec.source!r} ({source.path_note}); leave it unset")
    if spec.split is not None and spec.split not in METHODS:
        raise ValueError(f"data.split must be one of {', '.join(METHODS)} or null (the source's), got {spec.split!r}")
    if spec.split is not None and spec.split not in source.split_methods:
        offered = " or ".join(map(repr, sources.offering(spec.split)))
        raise ValueError(f"data.split {spec.split!r} needs source {offered}, got {spec.source!r}")
    split = spec.split or source.split_methods[0]
    if split == "by-alphabet" and spec.test_classes is not None:
        raise ValueError(
            "data.test_classes does not apply to split 'by-alphabet' (the evaluation set is the test split)"
        )
    for name in ("val_classes", "test_classes"):
        if split not in COUNTED and getattr(spec, name) is not None:
            raise ValueError(
                f"data.{name} does not apply to split {split!r} (train.csv, val.csv and test.csv list each "
                "split's classes); leave it unset"
            )
    for name in ("val_classes", "test_classes"):
        value = getattr(spec, name)
        fraction = isinstance(value, float) and 0.0 < value < 1.0
        if value is None or (_is_int(value) and value >= 1) or fraction:
            continue
        raise ValueError(f"data.{name} must be a class count >= 1 or a fraction in (0, 1), got {value!r}")
    if not isinstance(spec.rotations, bool):
        raise ValueError(f"data.rotations must be true or false, got {spec.rotations!r}")
    if not _is_int(spec.image_size) or not 4 <= spec.image_size <= 1024:
        raise ValueError(f"data.image_size must be an int in [4, 1024], got {spec.image_size!r}")
    if spec.channels not in (None, *CHANNELS) or isinstance(spec.channels, bool):
        raise ValueError(f"data.channels must be 1, 3, auto or null (source default), got {spec.channels!r}")
    if not isinstance(spec.skip_unreadable, bool):
        raise ValueError(f"data.skip_unreadable must be true or false, got {spec.skip_unreadable!r}")
    if not _is_int(spec.seed):
        raise ValueError(f"data.seed must be an int, got {spec.seed!r}")
    for name, least in (("synthetic_classes", 3), ("synthetic_images_per_class", 2)):
        value = getattr(spec, name)
        if not _is_int(value) or value < least:
            raise ValueError(f"data.{name} must be an int >= {least}, got {value!r}")


def build_params(spec: BuildSpec) -> dict[str, Any]:
    """The settings that determine the dataset's content (hashed into the fingerprint).

    The path is left out (the source digest covers the content, wherever it lives), and so
    are the settings of other sources and ``skip_unreadable`` (with it off, a source with
    unreadable files builds nothing), and the seed of a ``csv`` split (the source's files give
    it: nothing is drawn). The source adds its ``fingerprint_params`` (a folder build, the
    decoder's version).
    """
    source = sources.source_class(spec.source)
    resolved = spec.resolved()
    others = {name for other in sources.source_names() for name in sources.source_class(other).settings}
    dropped = {*_NOT_HASHED, *(others - set(source.settings)), *(() if resolved.split in COUNTED else ("seed",))}
    params = {k: v for k, v in dataclasses.asdict(resolved).items() if k not in dropped}
    params.update(source.fingerprint_params)
    params["format_version"] = FORMAT_VERSION
    params["resize_filter"] = RESIZE_FILTER
    return params


def open_source(spec: BuildSpec, progress: Say | None = None) -> Source:
    """The raw source ``spec`` names, opened (its module imported now: only the one in use is loaded)."""
    return sources.source_class(spec.source).open(spec, progress)


def build_dataset(
    spec: BuildSpec,
    out_dir: str | Path | Location,
    *,
    overwrite: bool = False,
    progress: Say | None = None,
    needs: Sequence[EpisodeNeed] = (),
    tally: Tally | None = None,
) -> dict[str, Any]:
    """Build the dataset ``spec`` describes into ``out_dir`` and return its manifest.

    Returns the existing manifest without rebuilding when ``out_dir`` already holds the same
    fingerprint intact. ``overwrite`` allows replacing a different or damaged dataset there;
    a non-empty directory that is not a dataset is never touched. Raises :class:`DatasetError`
    for those refusals, for unreadable sources and for sources with too few classes to split
    as asked, ``ValueError`` for an invalid spec.
    ``progress`` receives one-line status messages (pass ``print`` to see them); ``tally``, when
    given, is told each class written instead of the 10% progress lines. ``needs`` are
    the episodes each split must supply: a split that cannot is refused before anything is
    published.
    """
    validate_build_spec(spec)
    with open_source(spec, progress) as source:
        return write_dataset(source, spec, out_dir, overwrite=overwrite, progress=progress, needs=needs, tally=tally)


def write_dataset(
    source: Source,
    spec: BuildSpec,
    out_dir: str | Path | Location,
    *,
    overwrite: bool = False,
    progress: Say | None = None,
    needs: Sequence[EpisodeNeed] = (),
    tally: Tally | None = None,
) -> dict[str, Any]:
    """:func:`build_dataset` for an already opened ``source`` (``spec.source``/``path`` are
    only recorded). ``out_dir`` is a local path or a storage Location (``s3://...``)."""
    validate_build_spec(spec)
    say = progress or (lambda _: None)
    if isinstance(out_dir, Location) or storage.is_remote(str(out_dir)):
        target = storage.resolve(out_dir)
    else:
        target = storage.local(Path(out_dir).expanduser().absolute())
    params = build_params(spec)
    digest = source.digest()
    fp = fingerprint(digest, params)
    existing = _existing_dataset(target, fp, overwrite)
    _remove_stale(target, say)
    if existing is not None:
        say(f"{target} already holds dataset {fp[:12]} (same source and settings): not rebuilding")
        return existing
    resolved = spec.resolved()
    survey = source.survey()
    assert resolved.channels is not None and resolved.split is not None, "resolved() fills in the source's defaults"
    method = resolved.split
    channels, channels_reason = choose_channels(resolved.channels, survey)
    resolved = dataclasses.replace(resolved, channels=channels)
    classes = source.classes()
    where = f"{source.kind} source{f' {source.location}' if source.location else ''}"
    try:
        split = split_classes(classes, method, resolved.val_classes, resolved.test_classes, resolved.seed)
    except ValueError as exc:  # the source has too few classes for the split the spec asks for
        raise DatasetError(f"{where}: {exc}") from None
    counts = {"val_classes": spec.val_classes, "test_classes": spec.test_classes}
    counts = {k: getattr(resolved, k) if v is None else v for k, v in counts.items()}
    check_classes(needs, split, rotations=resolved.rotations, method=method, counts=counts, where=where)
    say(
        f"{where}: {len(classes)} classes -> "
        + ", ".join(f"{name} {len(members)}" for name, members in split.items())
        + (" (x4 with rotations)" if resolved.rotations else "")
    )
    plan = _Plan(source, split, resolved, digest, fp, survey, channels_reason, tuple(needs), where, tally)
    if target.local:
        manifest = _write_local(plan, Path(target.path), overwrite, say)
    else:
        manifest = _write_remote(plan, target, overwrite, say)
    if "report" in manifest:  # a raced build's manifest may predate build reports
        for line in report_lines(manifest["report"]):
            say(line)
    written = (f"{n} {s['classes']} classes/{s['images']} images" for n, s in manifest["splits"].items())
    say(f"wrote {target}: " + ", ".join(written))
    return manifest


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the first file is written: what goes into each split, and how."""

    source: Source
    split: ClassSplit
    resolved: BuildSpec
    digest: str
    fingerprint: str
    survey: Any
    channels_reason: str
    needs: tuple[EpisodeNeed, ...]
    where: str
    tally: Tally | None


def _write_local(plan: _Plan, out: Path, overwrite: bool, say: Say) -> dict[str, Any]:
    """Write the dataset in a hidden staging directory beside ``out`` and rename it into place."""
    staging = atomic.staging_dir(out)
    try:
        manifest = _write_files(plan, staging, say)
        write_manifest(staging, manifest)
        try:
            atomic.publish_dir(staging, out, replace=overwrite)
        except OSError:
            raced = _existing_dataset(storage.local(out), plan.fingerprint, overwrite=False)  # another build won
            if raced is None:
                raise
            manifest = raced
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return manifest


def _write_remote(plan: _Plan, target: Location, overwrite: bool, say: Say) -> dict[str, Any]:
    """Publish on an object store, which has no rename: the split files go to a staging prefix
    beside ``target`` and are moved into it, the manifest is written last (one PUT). A reader
    takes ``target`` for a dataset only when its manifest is there and matches its files, so
    a killed build never leaves one that passes; a replaced dataset loses its manifest first."""
    with tempfile.TemporaryDirectory(prefix="learn2tune-build-") as tmp:
        manifest = _write_files(plan, Path(tmp), say)
        staging = target.sibling(atomic.staging_name(target.name))
        try:
            staging.upload(Path(tmp))
            if overwrite:
                target.child(MANIFEST_NAME).delete()
                for name in target.names():
                    target.child(name).delete()
            for entry in manifest["splits"].values():
                target.filesystem.move(staging.child(entry["file"]).path, target.child(entry["file"]).path)
            target.child(MANIFEST_NAME).write_bytes(manifest_text(manifest).encode())
        finally:
            staging.delete()
    return manifest


def _write_files(plan: _Plan, directory: Path, say: Say) -> dict[str, Any]:
    """Write every split file into ``directory``; returns the manifest (not written yet)."""
    resolved = plan.resolved
    assert isinstance(resolved.channels, int), "build_dataset stores the chosen channel count in plan.resolved"
    image_shape = (resolved.channels, resolved.image_size, resolved.image_size)
    ticker = Ticker(sum(len(members) for _, members in plan.split.items()), say, plan.tally)
    conversions: Counter[str] = Counter()
    splits = {}
    for name, members in plan.split.items():
        writer = SplitWriting(plan.source, image_shape, resolved.rotations, plan.needs, plan.where, conversions)
        splits[name] = writer.write(name, members, directory / f"{name}.parquet", ticker)
    report = build_report(plan.survey, splits, image_shape, plan.channels_reason, dict(conversions), resolved.rotations)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "image_shape": list(image_shape),
        "image_layout": "CHW",
        "resize_filter": RESIZE_FILTER,
        "source": {"kind": plan.source.kind, "path": plan.source.location, "digest": plan.digest},
        "build": dataclasses.asdict(resolved),
        "splits": splits,
        "report": report,
    }


def _existing_dataset(out: Location, fp: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest at ``out`` if it holds fingerprint ``fp`` intact; None if ``out`` may be
    (re)written; :class:`DatasetError` if it must not be."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DatasetError(f"output {out} exists and is not a directory")
    entries = set(out.names())
    if not entries:
        return None
    if not out.local and MANIFEST_NAME not in entries and entries <= _DATASET_FILES:
        return None  # split files of a remote publish killed before its manifest: no dataset yet
    if MANIFEST_NAME not in entries or not entries <= _DATASET_FILES:
        raise DatasetError(
            f"output {out} is a non-empty directory that is not a learn2tune dataset "
            f"(found {', '.join(sorted(entries)[:5])}); choose an empty or new directory"
        )
    try:
        manifest = read_manifest(out)
    except DatasetError as exc:
        if overwrite:
            return None
        raise DatasetError(f"output {out} holds an unreadable dataset ({exc}); pass overwrite to replace it") from exc
    if manifest["fingerprint"] == fp:
        damage = _damage(out, manifest)
        if damage is None:
            return manifest
        if not overwrite:
            raise DatasetError(f"output {out} holds this dataset but {damage}; pass overwrite to rebuild it")
        return None
    if not overwrite:
        raise DatasetError(
            f"output {out} holds a different dataset (fingerprint {manifest['fingerprint'][:12]}, this build "
            f"{fp[:12]}); pass overwrite (--overwrite) to replace it or choose another directory"
        )
    return None


def _remove_stale(out: Location, say: Say) -> None:
    """Delete what builds of ``out`` that were killed left beside it, in one progress line."""
    if out.local:
        removed = [p.name for p in atomic.remove_stale(Path(out.path))]
    else:
        removed = [name for name in out.parent.names() if atomic.is_stale(out.name, name)]
        for name in removed:
            out.sibling(name).delete()
    if removed:
        say(f"removed what interrupted builds of {out.name} left: {', '.join(removed)}")


def _damage(out: Location, manifest: dict[str, Any]) -> str | None:
    """A description of the first split file that is missing or has the wrong size, else None."""
    for split in manifest["splits"].values():
        path = out.child(split["file"])
        if not path.is_file():
            return f"{split['file']} is missing"
        if path.size() != split["bytes"]:
            return f"{split['file']} is {path.size()} bytes, manifest says {split['bytes']}"
    return None
