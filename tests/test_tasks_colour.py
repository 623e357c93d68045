"""Colour data: synthetic colour glyphs, colour image folders at 84x84, the channel count a
dataset records."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.build import BuildSpec, build_dataset
from tasks.decode import read_image
from tasks.preprocess import prepare
from tasks.store import DatasetStore
from tasks.synthetic import SyntheticSource


def test_colour_glyphs_are_the_grey_shapes_painted_deterministically():
    colour = SyntheticSource(classes=6, images_per_class=4, image_size=84, seed=1, channels=3)
    grey = SyntheticSource(classes=6, images_per_class=4, image_size=84, seed=1)
    images = np.stack(colour.images("glyph_00002"))
    assert images.shape == (4, 84, 84, 3) and images.dtype == np.uint8
    again = SyntheticSource(classes=6, images_per_class=4, image_size=84, seed=1, channels=3)
    assert np.array_equal(images, np.stack(again.images("glyph_00002")))
    ink = np.stack(grey.images("glyph_00002")) > 200
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert luma[ink].mean() > luma[~ink].mean() + 80  # the strokes are the grey glyph's, bright on dark
    assert not np.array_equal(images[..., 0], images[..., 1])  # colour, not grey in three channels
    assert colour.digest() != grey.digest() == SyntheticSource(6, 4, 84, 1).digest()


def test_colour_glyph_classes_differ_in_colour_and_instances_vary():
    source = SyntheticSource(classes=8, images_per_class=5, image_size=32, seed=0, channels=3)
    data = np.stack([source.class_images(i) for i in range(8)]).astype(np.float32)  # [8, 5, 32, 32, 3]
    brightest = data.reshape(8, 5, -1, 3).max(axis=2)  # about each drawing's pen colour
    within = np.abs(brightest - brightest.mean(axis=1, keepdims=True)).mean()
    between = np.abs(brightest.mean(axis=1)[:, None] - brightest.mean(axis=1)[None]).mean()
    assert between > 3 * within > 0


def test_colour_glyph_classes_are_learnable_but_not_trivially():
    """20-way 1-shot nearest neighbour in pixel space: far above chance (0.05), far from perfect."""
    source = SyntheticSource(classes=20, images_per_class=6, image_size=28, seed=0, channels=3)
    data = np.stack([source.class_images(i) for i in range(20)]).astype(np.float32)
    support, query = data[:, 0].reshape(20, -1), data[:, 1:].reshape(100, -1)
    nearest = ((query[:, None] - support[None]) ** 2).sum(-1).argmin(1)
    accuracy = (nearest == np.repeat(np.arange(20), 5)).mean()
    assert 0.2 < accuracy < 0.95


def test_synthetic_build_with_three_channels_stores_colour_84x84(tmp_path):
    spec = BuildSpec(synthetic_classes=12, synthetic_images_per_class=3, image_size=84, channels=3, val_classes=3,
                     test_classes=3)  # fmt: skip
    manifest = build_dataset(spec, tmp_path / "colour")
    assert manifest["image_shape"] == [3, 84, 84] and manifest["report"]["channels"] == 3
    assert manifest["report"]["channels_reason"] == "data.channels: 3" and manifest["report"]["conversions"] == {}
    store = DatasetStore.open(tmp_path / "colour")
    assert store.channels == 3
    train = store.split("train")
    assert train.images.shape[1:] == (3, 84, 84)
    source = SyntheticSource(12, 3, 84, 0, channels=3)
    key = train.class_names[0]
    assert np.array_equal(train.class_images(0), np.stack(source.images(key)).transpose(0, 3, 1, 2))
    grey = build_dataset(BuildSpec(synthetic_classes=12, synthetic_images_per_class=3, val_classes=3, test_classes=3),
                         tmp_path / "grey")  # fmt: skip
    assert grey["fingerprint"] != manifest["fingerprint"] and DatasetStore.open(tmp_path / "grey").channels == 1


def _photos(root, colour: bool) -> None:
    """6 classes of 3 photos of mixed sizes (PNG and JPEG) under ``root/<class>/``."""
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"class {c}").mkdir(parents=True)
        for i, (height, width, kind) in enumerate(((120, 100, "png"), (50, 50, "jpg"), (84, 84, "png"))):
            shape = (height, width, 3) if colour else (height, width)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"class {c}" / f"{i}.{kind}")


def test_a_colour_folder_is_stored_in_colour_at_84x84(tmp_path):
    _photos(tmp_path / "photos", colour=True)
    spec = BuildSpec(source="folder", path=str(tmp_path / "photos"), image_size=84, val_classes=2, test_classes=2)
    manifest = build_dataset(spec, tmp_path / "d")
    assert manifest["image_shape"] == [3, 84, 84] and manifest["build"]["channels"] == 3
    assert manifest["report"]["channels_reason"].startswith("data.channels auto: 18 of 18 images are colour")
    assert manifest["report"]["conversions"] == {"resized to 84x84": 12}
    store = DatasetStore.open(tmp_path / "d")
    train = store.split("train")
    name = train.class_names[0]
    expected = [prepare(read_image(tmp_path / "photos" / name / f"{i}.{kind}")[0], 84, 3)
                for i, kind in enumerate(("png", "jpg", "png"))]  # fmt: skip
    assert store.channels == 3 and np.array_equal(train.class_images(0), np.stack(expected))


def test_a_grey_folder_asked_for_three_channels_repeats_the_grey_and_says_so(tmp_path):
    _photos(tmp_path / "photos", colour=False)
    spec = BuildSpec(source="folder", path=str(tmp_path / "photos"), image_size=84, channels=3, val_classes=2,
                     test_classes=2)  # fmt: skip
    manifest = build_dataset(spec, tmp_path / "d")
    assert manifest["image_shape"] == [3, 84, 84] and manifest["report"]["channels_reason"] == "data.channels: 3"
    assert manifest["report"]["conversions"]["grey to RGB (channel repeated)"] == 18
    images = DatasetStore.open(tmp_path / "d").split("test").images
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 1], images[:, 2])
