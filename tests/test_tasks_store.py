"""Dataset store: round trip, caching, and clear errors for missing, damaged or foreign data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import DatasetError
from tasks.parquet_io import SplitWriter, image_array
from tasks.store import DatasetStore
from tasks.synthetic import SyntheticSource


def test_round_trip_matches_the_source(tasks_small_dataset):
    store = DatasetStore.open(tasks_small_dataset)
    assert store.image_shape == (1, 28, 28) and len(store.fingerprint) == 64
    test = store.split("test")
    assert test is store.split("test")  # loaded once
    assert test.images.shape == (80, 1, 28, 28) and test.images.dtype == np.uint8
    assert test.images.flags.c_contiguous and not test.images.flags.writeable
    assert test.num_classes == 8 and test.min_class_size == 10
    assert list(test.class_offsets) == list(range(0, 81, 10)) and list(test.class_counts) == [10] * 8
    assert test.class_names == store.manifest["splits"]["test"]["class_names"]
    source = SyntheticSource(40, 10, 28, 3)
    for index in (0, 7):
        expected = np.stack(source.images(test.class_names[index]))[:, None]
        assert np.array_equal(test.class_images(index), expected)
    assert test.class_groups[0].startswith("alphabet_")


def test_many_row_groups_read_back_as_one_contiguous_array(tmp_path):
    rng = np.random.default_rng(0)
    classes = [rng.integers(0, 256, (n, 3, 4, 5), dtype=np.uint8) for n in (2, 5, 1, 4)]
    with SplitWriter(tmp_path / "x.parquet", (3, 4, 5), row_group_bytes=3 * 60) as writer:
        for i, images in enumerate(classes):
            writer.add_class(f"c{i}", images)
    assert pq.ParquetFile(tmp_path / "x.parquet").metadata.num_row_groups > 3
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column("class").to_pylist() == [0, 0, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3]
    assert table.column("class_name").to_pylist()[:3] == ["c0", "c0", "c1"]
    images = image_array(table.column("image"), (3, 4, 5))
    assert images.flags.c_contiguous and np.array_equal(images, np.concatenate(classes))


@pytest.fixture
def expect(tasks_dataset_copy, tasks_snapshot):
    """``expect(action, *fragments)``: ``action()`` raises a DatasetError whose message holds
    every fragment, and the dataset directory is byte-for-byte unchanged afterwards."""

    def check(action, *fragments):
        before = tasks_snapshot(tasks_dataset_copy)
        with pytest.raises(DatasetError) as info:
            action()
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)
        assert tasks_snapshot(tasks_dataset_copy) == before

    return check


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset directory .*nowhere does not exist"):
        DatasetStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"manifest\.json not found"):
        DatasetStore.open(tmp_path / "empty")


def test_corrupt_and_foreign_manifest(tasks_dataset_copy, expect):
    def open_it():
        return DatasetStore.open(tasks_dataset_copy)

    manifest_path = tasks_dataset_copy / "manifest.json"
    original = manifest_path.read_text()
    manifest_path.write_text(original[:100])
    expect(open_it, "manifest.json", "not valid JSON")
    manifest_path.write_text(json.dumps({"format": "someone-else", "splits": {}}))
    expect(open_it, "manifest.json", "format is 'someone-else'")
    broken = json.loads(original)
    del broken["splits"]["val"]["sha256"]
    manifest_path.write_text(json.dumps(broken))
    expect(open_it, "manifest.json", "'splits.val.sha256' is missing")
    broken = json.loads(original)
    broken["splits"]["train"]["file"] = "../elsewhere.parquet"
    manifest_path.write_text(json.dumps(broken))
    expect(open_it, "plain file name")


def test_unknown_and_missing_split(tasks_dataset_copy, expect):
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("dev"), "no split 'dev'", "train, val, test")
    (tasks_dataset_copy / "val.parquet").unlink()
    expect(lambda: store.split("val"), "val.parquet is missing")


def test_truncated_parquet(tasks_dataset_copy, expect):
    path = tasks_dataset_copy / "train.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("train"), str(path), "not a readable Parquet file", f"expects {len(data)}")


def test_wrong_schema_parquet(tasks_dataset_copy, expect):
    path = tasks_dataset_copy / "val.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(0, "class", table.column("class").cast(pa.int64())), path)
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("val"), str(path), "wrong schema", "class: int32")
    pq.write_table(table.rename_columns(["label", "class_name", "image"]), path)
    expect(lambda: store.split("val"), "expected columns (class: int32")


def test_manifest_mismatch(tasks_dataset_copy, expect):
    manifest_path = tasks_dataset_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    train = manifest["splits"]["train"]
    train["class_counts"][0] -= 1
    train["class_counts"][1] += 1
    train["min_images_per_class"], train["max_images_per_class"] = 9, 11
    manifest_path.write_text(json.dumps(manifest))
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("train"), "train.parquet", "class column does not match manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"]["class_names"][3] = "renamed"
    manifest_path.write_text(json.dumps(manifest))
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("test"), "test.parquet", "class 3 is named", "'renamed'")
    manifest["image_shape"] = [1, 32, 32]
    manifest_path.write_text(json.dumps(manifest))
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("val"), "val.parquet", "must be 1024 bytes")


def test_same_schema_other_content_is_caught_by_checksum(tasks_dataset_copy, expect):
    path = tasks_dataset_copy / "val.parquet"
    table = pq.read_table(path)
    images = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).copy()
    images[:100] ^= 1
    column = pa.array([images[i * 784 : (i + 1) * 784].tobytes() for i in range(table.num_rows)], pa.binary())
    pq.write_table(table.set_column(2, "image", column), path)
    store = DatasetStore.open(tasks_dataset_copy)
    expect(lambda: store.split("val"), str(path), "content differs from manifest.json")
