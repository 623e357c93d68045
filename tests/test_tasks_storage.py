"""Datasets on an object store: a real S3-compatible server (moto_server on 127.0.0.1).

A build publishes to ``s3://`` with the manifest last, the store reads it back byte for byte,
what a killed build leaves is neither taken for a dataset nor kept, and bad URIs are one error.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks import atomic, storage
from tasks.build import build_dataset
from tasks.errors import DatasetError
from tasks.store import DatasetStore


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS variables pointing pyarrow at the test server, for this test only."""
    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_build_to_s3_reads_back_like_the_local_build(s3_env, tasks_small_spec, tasks_small_dataset, request):
    uri = f"s3://{s3_env.bucket}/storage-test/{request.node.name}"
    manifest = build_dataset(tasks_small_spec, storage.resolve(uri))
    prefix = uri.removeprefix(f"s3://{s3_env.bucket}/")
    assert sorted(k.rsplit("/", 1)[1] for k in s3_env.keys(prefix + "/")) == [
        "manifest.json", "test.parquet", "train.parquet", "val.parquet"
    ]  # fmt: skip
    assert not [k for k in s3_env.keys("storage-test/") if "/." in k], "the staging prefix is gone"
    local, remote = DatasetStore.open(tasks_small_dataset), DatasetStore.open(uri)
    assert remote.fingerprint == local.fingerprint == manifest["fingerprint"]
    for split in ("train", "val", "test"):
        assert np.array_equal(remote.split(split).images, local.split(split).images)
    lines: list[str] = []
    assert build_dataset(tasks_small_spec, uri, progress=lines.append) == manifest
    assert any("not rebuilding" in line for line in lines)


def test_a_killed_build_leaves_nothing_that_passes_and_is_cleaned(s3_env, tasks_small_spec, tasks_small_dataset):
    target = storage.resolve(f"s3://{s3_env.bucket}/storage-test/killed")
    dead_pid = 2**22 + 1  # above the kernel's pid_max default: no such process
    stale = target.sibling(atomic.staging_name(target.name).replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    stale.upload(tasks_small_dataset)  # as if killed after uploading, before publishing
    target.child("train.parquet").write_bytes((tasks_small_dataset / "train.parquet").read_bytes())
    with pytest.raises(DatasetError, match="manifest.json not found"):
        DatasetStore.open(target)  # split files without their manifest are no dataset
    lines: list[str] = []
    build_dataset(tasks_small_spec, target, progress=lines.append)  # completes that publish
    assert any(stale.name in line for line in lines if line.startswith("removed what interrupted builds"))
    assert not stale.exists()
    assert DatasetStore.open(target).split("train").num_classes == 24


def test_bad_uris_are_one_error_each(s3_env):
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'ftp'"):
        storage.check_scheme("ftp://host/data", "workdir")
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' of s3://no-such-bucket/x does not exist"):
        storage.check_bucket(storage.resolve("s3://no-such-bucket/x"), "workdir")
    assert storage.resolve("relative/dir").local and not storage.is_remote("/abs/dir")
