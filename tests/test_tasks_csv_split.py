"""The CSV-split source (mini-ImageNet / tiered-ImageNet layout) on tiny fakes made here: the split
is exactly the CSVs' (64 / 16 / 20 classes for the standard files), colour images are stored at
84x84, and layouts that cannot be that split are refused (more rows in test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from csv_layout import MINI_IMAGENET_CLASSES, write_layout
from PIL import Image

from tasks.build import BuildSpec, build_dataset, validate_build_spec
from tasks.csv_split import CsvSplitSource
from tasks.errors import DatasetError
from tasks.preprocess import prepare
from tasks.store import DatasetStore

TINY_CONFIG = """\
workdir: {root}/runs
data: {{image_size: 84}}
episodes:
  train: {{ways: 3, shots: 1, query: 1}}
  test: {{ways: [3], shots: [1], query: 1}}
"""


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """A fake with mini-ImageNet's class counts, 2 tiny images per class."""
    root = tmp_path_factory.mktemp("mini-imagenet")
    return root, write_layout(root, MINI_IMAGENET_CLASSES, images=2, size=4)


def test_the_standard_csvs_give_exactly_their_64_16_20_split_whatever_the_seed(standard, tmp_path):
    root, labels = standard
    spec = BuildSpec(source="csv-split", path=str(root), image_size=8)
    manifest = build_dataset(spec, tmp_path / "a")
    assert {name: split["classes"] for name, split in manifest["splits"].items()} == MINI_IMAGENET_CLASSES
    assert {name: split["class_names"] for name, split in manifest["splits"].items()} == labels
    assert manifest["build"]["split"] == "csv" and manifest["build"]["val_classes"] is None
    assert manifest["source"]["kind"] == "csv-split" and manifest["report"]["images_read"] == 200
    other_seed = build_dataset(BuildSpec(source="csv-split", path=str(root), image_size=8, seed=5), tmp_path / "b")
    assert other_seed["splits"] == manifest["splits"] and other_seed["fingerprint"] == manifest["fingerprint"]


def test_learn2tune_build_csv_split_stores_the_colour_images_at_84x84_in_csv_order(tmp_path, capsys):
    from pipeline.cli import main

    root = tmp_path / "mini"
    labels = write_layout(root, {"train": 4, "val": 3, "test": 3}, images=3, size=10)
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.format(root=tmp_path))
    argv = ["build", "csv-split", "-c", str(tmp_path / "tiny.yaml"), "--path", str(root), "--out", str(tmp_path / "d")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "csv-split source" in printed and "train 4, val 3, test 3" in printed
    store = DatasetStore.open(tmp_path / "d")
    assert store.channels == 3 and store.image_shape == (3, 84, 84)
    report = store.manifest["report"]
    assert report["channels_reason"] == "data.channels auto: 30 of 30 images are colour (first: n0100000700000000.png)"
    assert report["conversions"] == {"resized to 84x84": 30}
    val = store.split("val")
    assert val.class_names == labels["val"]
    rows = [line.split(",") for line in (root / "val.csv").read_text().splitlines()[1:]]
    files = [name for name, label in rows if label == labels["val"][1]]
    expected = np.stack([prepare(np.asarray(Image.open(root / "images" / name)), 84, 3) for name in files])
    assert np.array_equal(val.class_images(1), expected)


def test_the_csv_split_takes_no_class_counts_and_no_other_split():
    validate_build_spec(BuildSpec(source="csv-split", path="/data/mini", split="csv"))
    with pytest.raises(ValueError, match=r"^data.val_classes does not apply to split 'csv' \(train.csv, val.csv"):
        validate_build_spec(BuildSpec(source="csv-split", path="/data/mini", val_classes=16))
    with pytest.raises(ValueError, match=r"^data.split 'random' needs source 'synthetic' or 'omniglot' or 'folder'"):
        validate_build_spec(BuildSpec(source="csv-split", path="/data/mini", split="random"))
    with pytest.raises(ValueError, match=r"^data.split 'csv' needs source 'csv-split', got 'folder'"):
        validate_build_spec(BuildSpec(source="folder", path="/data/mini", split="csv"))


def test_files_beside_the_csvs_blank_lines_and_a_byte_order_mark_are_read(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for c in range(3):
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).save(tmp_path / f"c{c}_{i}.png")
            rows.append(f"c{c}_{i}.png,class{c}")
    for split, rows_of in zip(("train", "val", "test"), (rows[:2], rows[2:4], rows[4:]), strict=True):
        (tmp_path / f"{split}.csv").write_text("\ufefffilename,label\n\n" + "\n".join(rows_of) + "\n\n", "utf-8")
    source = CsvSplitSource(tmp_path)  # no images/ folder: the names are relative to the root
    assert [(c.key, c.partition) for c in source.classes()] == [("class0", "train"), ("class1", "val"),
                                                                ("class2", "test")]  # fmt: skip
    assert source.survey().colour == [] and len(source.images("class1")) == 2


def test_a_file_listed_twice_an_escaping_name_and_an_empty_csv_are_refused(tmp_path):
    write_layout(tmp_path, {"train": 2, "val": 1, "test": 1}, images=2)
    original = (tmp_path / "test.csv").read_text()
    first_train = (tmp_path / "train.csv").read_text().splitlines()[1]
    (tmp_path / "test.csv").write_text(original + first_train.replace(",n", ",x") + "\n")
    with pytest.raises(DatasetError, match=r"is listed twice \(train.csv line 2 and test.csv line 4\)"):
        CsvSplitSource(tmp_path)
    (tmp_path / "test.csv").write_text(original + "../secret.png,n9\n")
    with pytest.raises(DatasetError, match=r"test.csv line 4: filename '../secret.png' must be a relative path"):
        CsvSplitSource(tmp_path)
    (tmp_path / "test.csv").write_text("filename,label\n")
    with pytest.raises(DatasetError, match=r"test.csv lists no images \(only its header\)"):
        CsvSplitSource(tmp_path)


def test_unreadable_images_stop_the_build_or_are_skipped_and_counted(tmp_path):
    labels = write_layout(tmp_path, {"train": 2, "val": 1, "test": 1}, images=3)
    broken = f"{labels['val'][0]}00000001.png"
    (tmp_path / "images" / broken).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=rf"images/{broken}: not a readable image .*remove it from its CSV"):
        CsvSplitSource(tmp_path).survey()
    survey = CsvSplitSource(tmp_path, skip_unreadable=True).survey()
    assert survey.skipped == {"unreadable": [broken]} and (survey.files_seen, survey.images_read) == (12, 11)


def test_a_csv_split_too_small_for_the_episodes_is_told_to_list_more_classes_not_to_count_them():
    from tasks.source import ClassInfo
    from tasks.split_check import EpisodeNeed, check_classes
    from tasks.splits import split_classes

    classes = [ClassInfo(f"n{i}", f"n{i}", split) for split, n in (("train", 8), ("val", 2), ("test", 5))
               for i in range(len(split) * 100, len(split) * 100 + n)]  # fmt: skip
    split = split_classes(classes, "csv", None, None, seed=0)
    assert [len(members) for _, members in split.items()] == [8, 2, 5]
    needs = [EpisodeNeed("val", 5, 1, 5, "episodes.train", "used for validation")]
    with pytest.raises(DatasetError) as refused:
        check_classes(needs, split, rotations=False, method="csv", counts={}, where="csv-split source /m")
    assert str(refused.value).endswith(
        "split 'val' gets 2 classes but episodes.train (used for validation) asks for 5-way episodes: "
        "lower episodes.train.ways to 2 or list more classes in val.csv"
    )


def test_the_mini_imagenet_config_builds_a_fake_of_its_layout(tmp_path, capsys):
    """configs/mini-imagenet.yaml as the README gives it, on 5 classes of 20 tiny images per split
    (enough for its 5-way, 5-shot, 15-query test episodes)."""
    from pipeline.cli import main

    labels = write_layout(tmp_path / "mini", {"train": 5, "val": 5, "test": 5}, images=20, size=4)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "mini-imagenet.yaml")
    argv = ["build", "-c", config, "--path", str(tmp_path / "mini"), "--out", str(tmp_path / "d"),
            "--set", f"workdir={tmp_path / 'runs'}"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    store = DatasetStore.open(tmp_path / "d")
    assert store.image_shape == (3, 84, 84) and store.manifest["build"]["split"] == "csv"
    assert {name: store.split(name).class_names for name in labels} == labels
