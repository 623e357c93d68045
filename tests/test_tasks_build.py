"""Dataset builds: manifest, fingerprint, no-op rebuilds, overwrite rules, atomicity, crash cleanup, validation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from tasks import atomic
from tasks.build import BuildSpec, build_dataset, build_params, validate_build_spec, write_dataset
from tasks.errors import DatasetError
from tasks.manifest import fingerprint
from tasks.store import DatasetStore
from tasks.synthetic import SyntheticSource


def test_manifest_counts_shapes_and_fingerprint(tasks_small_dataset, tasks_small_spec):
    manifest = json.loads((tasks_small_dataset / "manifest.json").read_text())
    files = sorted(p.name for p in tasks_small_dataset.iterdir())
    assert files == ["manifest.json", "test.parquet", "train.parquet", "val.parquet"]
    assert manifest["image_shape"] == [1, 28, 28]
    assert {n: (s["classes"], s["images"]) for n, s in manifest["splits"].items()} == {
        "train": (24, 240),
        "val": (8, 80),
        "test": (8, 80),
    }
    names = [n for s in manifest["splits"].values() for n in s["class_names"]]
    assert len(set(names)) == 40
    train = manifest["splits"]["train"]
    assert train["min_images_per_class"] == train["max_images_per_class"] == 10
    assert train["bytes"] == (tasks_small_dataset / "train.parquet").stat().st_size
    assert manifest["source"]["digest"] == SyntheticSource(40, 10, 28, 3).digest()
    assert manifest["build"]["val_classes"] == 8 and manifest["build"]["channels"] == 1
    table = pq.read_table(tasks_small_dataset / "train.parquet")
    assert table.schema.names == ["class", "class_name", "image"]
    labels = table.column("class").to_numpy()
    assert labels.dtype == np.int32 and np.all(np.diff(labels) >= 0) and labels.max() == 23
    assert table.column("class_name")[0].as_py() == train["class_names"][0]
    assert len(table.column("image")[0].as_py()) == 28 * 28
    assert manifest["fingerprint"] == fingerprint(manifest["source"]["digest"], build_params(tasks_small_spec))
    other = dataclasses.replace(tasks_small_spec, image_size=24)
    assert build_params(other) != build_params(tasks_small_spec)


def test_rebuild_with_same_spec_is_a_no_op(tasks_dataset_copy, tasks_small_spec, tasks_snapshot):
    before = tasks_snapshot(tasks_dataset_copy)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tasks_dataset_copy.iterdir()}
    messages: list[str] = []
    manifest = build_dataset(tasks_small_spec, tasks_dataset_copy, progress=messages.append)
    assert "not rebuilding" in messages[0] and len(messages) == 1
    assert manifest == json.loads((tasks_dataset_copy / "manifest.json").read_text())
    assert tasks_snapshot(tasks_dataset_copy) == before
    assert {p.name: p.stat().st_mtime_ns for p in tasks_dataset_copy.iterdir()} == mtimes


def test_different_spec_needs_overwrite(tasks_dataset_copy, tasks_small_spec, tasks_snapshot):
    before = tasks_snapshot(tasks_dataset_copy)
    other = dataclasses.replace(tasks_small_spec, seed=4)
    with pytest.raises(DatasetError, match=r"holds a different dataset.*overwrite"):
        build_dataset(other, tasks_dataset_copy)
    assert tasks_snapshot(tasks_dataset_copy) == before
    manifest = build_dataset(other, tasks_dataset_copy, overwrite=True)
    assert manifest["build"]["seed"] == 4
    assert json.loads((tasks_dataset_copy / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]
    assert sorted(p.name for p in tasks_dataset_copy.parent.iterdir()) == ["dataset"]  # nothing left beside it


def test_refuses_non_dataset_directory(tmp_path, tasks_small_spec, tasks_snapshot):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match="not a learn2tune dataset"):
            build_dataset(tasks_small_spec, out, overwrite=overwrite)
    assert tasks_snapshot(out) == {"notes.txt": tasks_snapshot(out)["notes.txt"]}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_dataset(tasks_small_spec, empty)["splits"]["test"]["classes"] == 8


class _FailingSource(SyntheticSource):
    """A synthetic source whose 12th class cannot be read."""

    def images(self, key: str) -> list[np.ndarray]:
        if key == "glyph_00011":
            raise DatasetError("glyph_00011: simulated read failure")
        return super().images(key)


def test_failed_build_leaves_nothing(tmp_path, tasks_small_spec):
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="simulated"):
        write_dataset(_FailingSource(40, 10, 28, 3), tasks_small_spec, out)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_folder_image_fails_atomically_naming_the_file(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(6):
        for i in range(3):
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    spec = BuildSpec(source="folder", path=str(root), val_classes=2, test_classes=2, image_size=16)
    manifest = build_dataset(spec, tmp_path / "good")
    assert manifest["image_shape"] == [3, 16, 16] and manifest["source"]["kind"] == "folder"
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    same = build_dataset(dataclasses.replace(spec, path=str(moved)), tmp_path / "good2")
    assert same["fingerprint"] == manifest["fingerprint"]  # content, not location, is fingerprinted
    shutil.rmtree(moved)
    shutil.rmtree(tmp_path / "good2")
    (root / "class4" / "1.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match=r"class4/1\.png"):
        build_dataset(spec, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "images"]


def test_rotations_make_four_classes_per_character(tmp_path):
    spec = BuildSpec(synthetic_classes=10, synthetic_images_per_class=4, val_classes=2, test_classes=2, rotations=True)
    manifest = build_dataset(spec, tmp_path / "rot")
    train = manifest["splits"]["train"]
    assert (train["classes"], train["images"]) == (24, 96)
    base = train["class_names"][0]
    assert train["class_names"][:4] == [base, f"{base}/rot90", f"{base}/rot180", f"{base}/rot270"]
    column = pq.read_table(tmp_path / "rot" / "train.parquet").column("image")
    images = np.frombuffer(b"".join(column.to_pylist()), np.uint8).reshape(-1, 1, 28, 28)
    assert np.array_equal(np.rot90(images[0], 1, axes=(1, 2)), images[4])  # first image of rot90 class


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": "imagenet"}, "data.source"),
        ({"source": "folder"}, "data.path"),
        ({"path": "/x"}, "data.path"),
        ({"split": "by-alphabet"}, "data.split"),
        ({"source": "omniglot", "split": "by-alphabet", "test_classes": 3}, "data.test_classes"),
        ({"val_classes": 0}, "data.val_classes"),
        ({"test_classes": 1.5}, "data.test_classes"),
        ({"val_classes": True}, "data.val_classes"),
        ({"image_size": 2}, "data.image_size"),
        ({"channels": 2}, "data.channels"),
        ({"rotations": "yes"}, "data.rotations"),
        ({"seed": 1.0}, "data.seed"),
        ({"synthetic_classes": 2}, "data.synthetic_classes"),
    ],
)
def test_validate_build_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_build_spec(dataclasses.replace(BuildSpec(), **change))


CRASH_CONFIG = """\
name: crash
workdir: {root}/runs
data: {{synthetic_classes: 800, synthetic_images_per_class: 10, dir: {root}/ds}}
episodes: {{train: {{query: 5}}, test: {{query: 5}}}}
"""


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_build_killed_midway_leaves_no_dataset_and_the_next_build_cleans_up(tmp_path, capsys):
    (tmp_path / "crash.yaml").write_text(CRASH_CONFIG.format(root=tmp_path))
    argv = ["build", "-c", str(tmp_path / "crash.yaml")]
    out = tmp_path / "ds"
    with (tmp_path / "build.log").open("wb") as log:
        build = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], stdout=log, stderr=log)
        try:
            # mid-build: the staging directory exists and its first split file is being written
            _wait_for(lambda: any(tmp_path.glob(".ds.tmp-*/train.parquet")) or build.poll() is not None, 120, "staging")
        finally:
            build.kill()
            build.wait()
    assert build.returncode == -signal.SIGKILL, (tmp_path / "build.log").read_text()
    [staging] = tmp_path.glob(".ds.tmp-*")
    assert f"-{build.pid}-" in staging.name
    for path in (out, staging):
        with pytest.raises(DatasetError):
            DatasetStore.open(path)

    assert main(argv) == 0
    assert f"removed what interrupted builds of ds left: {staging.name}" in capsys.readouterr().out
    assert DatasetStore.open(out).split("test").num_classes == 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.log", "crash.yaml", "ds"]


def test_stale_cleanup_spares_running_builds_other_hosts_and_foreign_names(tmp_path):
    target = tmp_path / "ds"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = atomic.staging_dir(target).name.split("-")[1]  # this process's own, live, staging dir
    dead = tmp_path / f".ds.tmp-{host}-{finished.pid}-abc123"
    dead_old = tmp_path / f".ds.old-{host}-{finished.pid}-abc124"
    kept = {
        f".ds.tmp-otherhost-{finished.pid}-abc125",  # another machine's build: its pid means nothing here
        f".ds.tmp-{host}-{finished.pid}",  # not a name this module makes
        ".ds.tmp-legacy1",  # the old unowned naming
        f".other.tmp-{host}-{finished.pid}-abc126",  # another target's
    }
    for path in (dead, dead_old, *(tmp_path / name for name in kept)):
        path.mkdir()
        (path / "train.parquet").write_bytes(b"partial")
    assert atomic.remove_stale(target) == [dead_old, dead]
    left = {p.name for p in tmp_path.iterdir()}
    assert left - kept == {next(p.name for p in tmp_path.glob(f".ds.tmp-{host}-{os.getpid()}-*"))}
    assert atomic.remove_stale(tmp_path / "missing" / "ds") == []
