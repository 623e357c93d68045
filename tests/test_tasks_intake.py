"""Folder intake: every image mode read faithfully, symlinks followed with guards, channels from
the data, the build report's counts; each stored pixel checked against a reference decode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.build import BuildSpec, build_dataset
from tasks.decode import decode
from tasks.errors import DatasetError
from tasks.store import DatasetStore

SIZE = 8  # images are stored at their own size, so stored pixels equal the reference exactly


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _sixteen_bit(folder: Path) -> list[np.ndarray]:
    """16-bit PNGs spanning 0..65535; reference: value * 255 / 65535, rounded."""
    expected = []
    for i in range(3):
        values = _rng(f"16-{i}").integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
        values[0, 0], values[0, 1] = 0, 65535
        Image.fromarray(values).save(folder / f"{i}.png")
        expected.append(np.round(values / 65535 * 255).astype(np.uint8))
    return expected


def _tiffs(folder: Path) -> list[np.ndarray]:
    """Big-endian 16-bit TIFFs and a float TIFF in 0..1."""
    expected = []
    for i in range(2):
        values = _rng(f"tif-{i}").integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
        Image.frombytes("I;16B", (SIZE, SIZE), values.astype(">u2").tobytes()).save(folder / f"{i}.tif")
        expected.append(np.round(values / 65535 * 255).astype(np.uint8))
    floats = _rng("tif-f").random((SIZE, SIZE)).astype(np.float32)
    Image.fromarray(floats, mode="F").save(folder / "2.tiff")
    expected.append(np.round(floats.astype(np.float64) * 255).astype(np.uint8))
    return expected


def _webps(folder: Path) -> list[np.ndarray]:
    expected = []
    for i in range(3):
        rgb = _rng(f"webp-{i}").integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.webp", lossless=True)
        expected.append(rgb)
    return expected


def _alpha(folder: Path) -> list[np.ndarray]:
    """RGBA PNGs; reference: composited onto white (rgb * a + 255 * (255 - a)) / 255."""
    expected = []
    for i in range(2):
        rgba = _rng(f"rgba-{i}").integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
        Image.fromarray(rgba, mode="RGBA").save(folder / f"{i}.png")
        a = rgba[..., 3:].astype(np.float64) / 255
        expected.append(np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8))
    return expected


def _palette(folder: Path) -> list[np.ndarray]:
    expected = []
    palette = _rng("palette").integers(0, 256, (256, 3), dtype=np.uint8)
    for i in range(2):
        index = _rng(f"p-{i}").integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        image = Image.frombytes("P", (SIZE, SIZE), index.tobytes())
        image.putpalette(palette.tobytes())
        image.save(folder / f"{i}.png")
        expected.append(palette[index])
    return expected


def _cmyk(folder: Path) -> list[np.ndarray]:
    """Solid CMYK TIFFs without black: R, G, B = 255 - C, 255 - M, 255 - Y."""
    expected = []
    for i, cmy in enumerate([(0, 255, 0), (30, 100, 200)]):
        Image.new("CMYK", (SIZE, SIZE), (*cmy, 0)).save(folder / f"{i}.tif")
        expected.append(np.broadcast_to(255 - np.array(cmy, np.uint8), (SIZE, SIZE, 3)).copy())
    return expected


def _bits(folder: Path) -> list[np.ndarray]:
    expected = []
    for i in range(2):
        on = _rng(f"bit-{i}").random((SIZE, SIZE)) > 0.5
        Image.fromarray(on).convert("1").save(folder / f"{i}.png")
        expected.append(np.where(on, 255, 0).astype(np.uint8))
    return expected


def _grey(folder: Path) -> list[np.ndarray]:
    """An L PNG, an LA PNG (alpha onto white) and an RGB PNG whose channels are equal (grey)."""
    grey = _rng("grey").integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "0.png")
    la = _rng("la").integers(0, 256, (SIZE, SIZE, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(folder / "1.png")
    a = la[..., 1].astype(np.float64) / 255
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / "2.png")
    return [grey, np.round(la[..., 0] * a + 255 * (1 - a)).astype(np.uint8), grey]


def _letters(folder: Path) -> list[np.ndarray]:
    expected = []
    for i in range(3):
        grey = _rng(f"letter-{i}").integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        Image.fromarray(grey).save(folder / f"{i}.bmp")
        expected.append(grey)
    return expected


GREY_CLASSES = {"sixteen": _sixteen_bit, "tiff16": _tiffs, "bits": _bits, "grey": _grey}
COLOUR_CLASSES = {"webp": _webps, "alpha": _alpha, "palette": _palette, "cmyk": _cmyk}


def _tree(root: Path, classes: dict, elsewhere: Path) -> dict[str, list[np.ndarray]]:
    """Class folders under ``root``, plus ``linked`` (a symlink to a folder outside it), a symlink
    loop, a duplicate symlinked file and stray non-image files; class key -> reference images."""
    expected = {}
    for name, make in classes.items():
        (root / name).mkdir(parents=True)
        expected[name] = make(root / name)
    (elsewhere / "letters").mkdir(parents=True)
    expected["linked"] = _letters(elsewhere / "letters")
    os.symlink(elsewhere / "letters", root / "linked")
    os.symlink(root, root / "grey" / "back")  # a loop: grey/back/grey/back/...
    os.symlink(root / "grey" / "0.png", root / "sixteen" / "dup.png")  # a second link to one file
    (root / "README.txt").write_text("class-per-folder images")
    (root / "grey" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX" / "grey").mkdir(parents=True)
    (root / "__MACOSX" / "grey" / "._0.png").write_bytes(b"\0\5\26\7")
    return expected


def _stored(out: Path) -> dict[str, np.ndarray]:
    store = DatasetStore.open(out)
    stored = {}
    for name in ("train", "val", "test"):
        split = store.split(name)
        for index, key in enumerate(split.class_names):
            stored[key] = split.class_images(index)
    return stored


def _as_stored(image: np.ndarray, channels: int) -> np.ndarray:
    """A reference image as ``[C, H, W]``: grey repeated for 3 channels."""
    if image.ndim == 2:
        image = image[..., None] if channels == 1 else np.stack([image] * 3, axis=-1)
    return image.transpose(2, 0, 1)


def test_mixed_folder_is_stored_faithfully_in_rgb_with_a_report(tmp_path):
    root = tmp_path / "images"
    expected = _tree(root, {**GREY_CLASSES, **COLOUR_CLASSES}, tmp_path / "elsewhere")
    (root / "webp" / "9.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 truncated")  # Pillow cannot read it
    spec = BuildSpec(source="folder", path=str(root), image_size=SIZE, skip_unreadable=True)
    with pytest.raises(DatasetError, match=r"webp/9\.webp: not a readable image .*data\.skip_unreadable"):
        build_dataset(BuildSpec(source="folder", path=str(root), image_size=SIZE), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    lines: list[str] = []
    manifest = build_dataset(spec, tmp_path / "out", progress=lines.append)

    stored = _stored(tmp_path / "out")
    assert sorted(stored) == sorted(expected) and manifest["image_shape"] == [3, SIZE, SIZE]
    for key, images in expected.items():
        assert len(stored[key]) == len(images), key
        for index, image in enumerate(images):
            tolerance = 1 if key in ("alpha", "grey") else 0  # compositing rounds either way
            difference = np.abs(stored[key][index].astype(int) - _as_stored(image, 3).astype(int)).max()
            assert difference <= tolerance, f"{key} image {index} differs by {difference}"
    report = manifest["report"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["report"] == report
    assert report["files_seen"] == 28 and report["images_read"] == 23 and report["images_stored"] == 23
    assert report["skipped"] == {"duplicate": 1, "not an image": 3, "symlink loop": 1, "unreadable": 1}
    assert report["skipped_examples"]["unreadable"] == ["webp/9.webp"]
    assert report["skipped_examples"]["duplicate"] == ["sixteen/dup.png (same file as grey/0.png)"]
    assert report["channels"] == 3 and "images are colour" in report["channels_reason"]
    assert report["conversions"]["16-bit I;16 scaled to 0-255"] == 3
    assert report["conversions"]["grey to RGB (channel repeated)"] == 13
    per_class = list(report["classes"].values())
    assert sum(c["classes"] for c in per_class) == 9
    assert min(c["min"] for c in per_class) == 2 and max(c["max"] for c in per_class) == 3
    assert any(line.startswith(f"stored 23 images as 3x{SIZE}x{SIZE}") for line in lines), lines
    assert any("skipped 1 duplicate, 3 not an image, 1 symlink loop, 1 unreadable" in line for line in lines)


def test_grey_folder_is_stored_with_one_channel(tmp_path):
    root = tmp_path / "images"
    expected = _tree(root, GREY_CLASSES, tmp_path / "elsewhere")
    manifest = build_dataset(BuildSpec(source="folder", path=str(root), image_size=SIZE), tmp_path / "out")
    assert manifest["image_shape"] == [1, SIZE, SIZE] and manifest["build"]["channels"] == 1
    assert manifest["report"]["channels_reason"] == "data.channels auto: all 14 images are grey"
    stored = _stored(tmp_path / "out")
    for key, images in expected.items():
        for index, image in enumerate(images):
            tolerance = 1 if key == "grey" else 0
            assert np.abs(stored[key][index].astype(int) - _as_stored(image, 1).astype(int)).max() <= tolerance


def test_wide_integer_and_float_images_are_stretched_not_clipped():
    wide = Image.fromarray(np.array([[-70000, 0], [70000, 200000]], np.int32))
    assert decode(wide)[0].tolist() == [[0, 66], [132, 255]]
    assert decode(wide)[1] == "32-bit I stretched from its range to 0-255"
    levels = Image.fromarray(np.array([[0.0, 127.6], [254.9, 3.0]], np.float32), mode="F")
    pixels, note = decode(levels)
    assert pixels.tolist() == [[0, 128], [255, 3]] and note == "float F (0-255) rounded"


def test_serving_decodes_a_request_image_as_the_build_decodes_its_file(tmp_path):
    import base64

    from deploy.request import decode_image

    values = _rng("serve").integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "q.png")
    request = base64.b64encode((tmp_path / "q.png").read_bytes()).decode()
    expected = np.round(values / 65535 * 255).astype(np.uint8)
    assert np.array_equal(decode_image(request, (1, SIZE, SIZE), 0)[0], expected)
