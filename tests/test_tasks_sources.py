"""Sources: synthetic glyphs, image folders, Omniglot archives (tiny real zips built here)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.download import fetch
from tasks.errors import DatasetError
from tasks.folder import FolderSource
from tasks.omniglot import OmniglotSource
from tasks.synthetic import SyntheticSource


def test_synthetic_is_deterministic_by_seed():
    a = SyntheticSource(classes=6, images_per_class=5, seed=1)
    b = SyntheticSource(classes=6, images_per_class=5, seed=1)
    c = SyntheticSource(classes=6, images_per_class=5, seed=2)
    for info in a.classes():
        assert np.array_equal(np.stack(a.images(info.key)), np.stack(b.images(info.key)))
    assert not np.array_equal(np.stack(a.images("glyph_00000")), np.stack(c.images("glyph_00000")))
    assert a.digest() == b.digest() != c.digest()


def test_synthetic_classes_shapes_and_groups():
    source = SyntheticSource(classes=45, images_per_class=4, image_size=32, seed=0)
    infos = source.classes()
    assert [i.key for i in infos] == sorted(i.key for i in infos) and len(infos) == 45
    assert infos[0].group == infos[19].group != infos[20].group
    images = np.stack(source.images(infos[7].key))
    assert images.shape == (4, 32, 32) and images.dtype == np.uint8
    assert images.max() == 255 and np.median(images) == 0  # bright strokes on a dark background
    assert not np.array_equal(images[0], images[1])  # instances differ
    # class i does not depend on how many classes were asked for
    fewer = SyntheticSource(classes=8, images_per_class=4, image_size=32)
    assert np.array_equal(images, np.stack(fewer.images(infos[7].key)))
    with pytest.raises(KeyError, match="glyph_00045"):
        source.images("glyph_00045")


def test_synthetic_classes_are_distinguishable_but_not_trivially():
    """20-way 1-shot nearest neighbour in pixel space: far above chance (0.05), far from perfect."""
    source = SyntheticSource(classes=20, images_per_class=6, seed=0)
    data = np.stack([np.stack(source.images(i.key)) for i in source.classes()]).astype(np.float32)
    support, query = data[:, 0].reshape(20, -1), data[:, 1:].reshape(100, -1)
    nearest = ((query[:, None] - support[None]) ** 2).sum(-1).argmin(1)
    accuracy = (nearest == np.repeat(np.arange(20), 5)).mean()
    assert 0.15 < accuracy < 0.8


def _write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def test_folder_source_classes_groups_and_images(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", np.full((10, 12, 3), 200, np.uint8))
    _write_png(tmp_path / "cat" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    _write_png(tmp_path / "greek" / "alpha" / "1.png", np.full((5, 5), 7, np.uint8))
    _write_png(tmp_path / "greek" / "alpha" / "2.png", np.full((5, 5), 8, np.uint8))
    (tmp_path / "greek" / "alpha" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    _write_png(tmp_path / ".hidden" / "x.png", np.zeros((5, 5), np.uint8))
    source = FolderSource(tmp_path)
    assert [(i.key, i.group) for i in source.classes()] == [("cat", "cat"), ("greek/alpha", "greek")]
    cat = source.images("cat")
    assert [im.shape for im in cat] == [(10, 12, 3), (8, 8, 3)] and cat[0][0, 0, 0] == 200
    assert source.images("greek/alpha")[0].shape == (5, 5)
    before = source.digest()
    _write_png(tmp_path / "cat" / "a.png", np.full((10, 12, 3), 201, np.uint8))
    assert FolderSource(tmp_path).digest() != before


def test_folder_source_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no classes"):
        FolderSource(tmp_path / "empty")
    _write_png(tmp_path / "flat" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="sub-folder"):
        FolderSource(tmp_path / "flat")
    _write_png(tmp_path / "single" / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="class 'cls' has only 1 image"):
        FolderSource(tmp_path / "single").classes()  # checked once every file has been read
    _write_png(tmp_path / "bad" / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "bad" / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        FolderSource(tmp_path / "bad").images("cls")


def _omniglot_tree(root: Path) -> Path:
    """Extracted Omniglot-shaped folders with 1-bit PNGs (True = white background)."""
    rng = np.random.default_rng(0)
    for set_name, alphabets in (("images_background", ("Alpha", "Beta")), ("images_evaluation", ("Gamma",))):
        for alphabet in alphabets:
            for char in (1, 2):
                for drawer in (1, 2, 3):
                    background = rng.random((105, 105)) > 0.05
                    name = f"character{char:02d}/0001_{drawer:02d}.png"
                    _write_png(root / set_name / alphabet / name, background, "1")
    return root


def _zip_sets(tree: Path, out: Path) -> Path:
    out.mkdir()
    for set_name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(out / f"{set_name}.zip", "w") as zf:
            for path in sorted((tree / set_name).rglob("*")):
                zf.write(path, path.relative_to(tree).as_posix())
    return out


def test_omniglot_from_zips_and_folders_agree(tmp_path):
    tree = _omniglot_tree(tmp_path / "tree")
    zips = _zip_sets(tree, tmp_path / "zips")
    with OmniglotSource(zips) as from_zip, OmniglotSource(tree) as from_dir:
        infos = from_zip.classes()
        assert infos == from_dir.classes()
        assert infos[1].key == "images_background/Alpha/character02"
        assert {(i.group, i.partition) for i in infos} == {
            ("Alpha", "background"),
            ("Beta", "background"),
            ("Gamma", "evaluation"),
        }
        key = infos[0].key
        images = from_zip.images(key)
        assert len(images) == 3 and images[0].shape == (105, 105) and images[0].dtype == np.uint8
        original = np.asarray(Image.open(tree / key / "0001_01.png"))  # bool, True = background
        assert np.array_equal(images[0] == 255, ~original)  # strokes become 255, background 0
        assert all(np.array_equal(a, b) for a, b in zip(images, from_dir.images(key), strict=True))
        assert from_zip.digest() == from_dir.digest()


def test_omniglot_missing_set_and_bad_member(tmp_path):
    tree = _omniglot_tree(tmp_path / "tree")
    shutil.rmtree(tree / "images_evaluation")
    with pytest.raises(DatasetError, match="images_evaluation.zip"):
        OmniglotSource(tree)
    with pytest.raises(DatasetError, match="not a directory"):
        OmniglotSource(tmp_path / "nowhere")
    bad = _omniglot_tree(tmp_path / "bad")
    target = bad / "images_background" / "Alpha" / "character01" / "0001_02.png"
    target.write_bytes(b"garbage")
    with OmniglotSource(bad) as source, pytest.raises(DatasetError, match="0001_02.png"):
        source.images("images_background/Alpha/character01")


def test_download_checks_md5_and_leaves_no_file(tmp_path):
    payload = tmp_path / "payload.zip"
    payload.write_bytes(b"some bytes")
    good = hashlib.md5(b"some bytes").hexdigest()
    dest = tmp_path / "cache" / "payload.zip"
    with pytest.raises(DatasetError, match="md5"):
        fetch(payload.as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []
    fetch(payload.as_uri(), dest, good)
    assert dest.read_bytes() == b"some bytes"


def test_omniglot_download_failure_suggests_path(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"network unreachable.*--path"):
        OmniglotSource(None, cache_dir=cache, url="http://127.0.0.1:9/{name}.zip")
    assert list(cache.iterdir()) == []
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "images_background.zip").write_bytes(b"not the real archive")
    with pytest.raises(DatasetError, match=r"md5 .* expected 68d2efa1b9178cc56df9314c21c6e718.*--path"):
        OmniglotSource(None, cache_dir=cache, url=mirror.as_uri() + "/{name}.zip")
    assert list(cache.iterdir()) == []


STRIPES_MODULE = '''
"""A toy data source: 12 classes of horizontal stripes, one period per class."""

import hashlib

import numpy as np

from tasks.source import ClassInfo, Source


class StripesSource(Source):
    kind = "stripes"
    path_use = "unused"
    path_note = "it draws its stripes"

    @classmethod
    def open(cls, spec, progress=None):
        return cls()

    @property
    def location(self):
        return None

    def classes(self):
        return [ClassInfo(key=f"period{p:02d}", group=f"g{p % 3}") for p in range(2, 14)]

    def images(self, key):
        period, rows = int(key.removeprefix("period")), np.arange(20)
        stripes = [(((rows + shift) // period) % 2 * 255).astype(np.uint8) for shift in range(4)]
        return [np.repeat(column[:, None], 20, axis=1) for column in stripes]

    def digest(self):
        return hashlib.sha256(b"stripes 1").hexdigest()
'''

TWO_WAY = """\
episodes:
  train: {ways: 2, shots: 1, query: 1}
  test: {ways: [2], shots: [1], query: 1}
"""


def test_a_new_source_is_one_module_plus_one_registry_line(tmp_path, monkeypatch, capsys):
    from pipeline.cli import EXIT_USER_ERROR, main
    from tasks import sources
    from tasks.store import DatasetStore

    (tmp_path / "stripes_source.py").write_text(STRIPES_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sources._SOURCES, "stripes", "stripes_source:StripesSource")  # the registration line
    (tmp_path / "two-way.yaml").write_text(TWO_WAY)
    config = ["-c", str(tmp_path / "two-way.yaml"), "--set", f"workdir={tmp_path / 'runs'}"]

    assert main(["build", "stripes", *config, "--out", str(tmp_path / "ds")]) == 0
    store = DatasetStore.open(tmp_path / "ds")
    assert store.manifest["source"]["kind"] == "stripes" and store.image_shape == (1, 28, 28)
    assert sum(split["classes"] for split in store.manifest["splits"].values()) == 12
    assert store.manifest["build"]["val_classes"] == 0.15  # the Source defaults apply

    capsys.readouterr()
    assert main(["build", "stripe", *config]) == EXIT_USER_ERROR
    assert "must be one of synthetic, omniglot, folder, csv-split, stripes, got 'stripe'; did you mean 'stripes'?" in (
        capsys.readouterr().err
    )
    assert main(["build", "stripes", *config, "--path", str(tmp_path)]) == EXIT_USER_ERROR
    assert "data.path does not apply to source 'stripes' (it draws its stripes)" in capsys.readouterr().err
    assert main(["build", "stripes", *config, "--split", "by-alphabet"]) == EXIT_USER_ERROR
    assert "data.split 'by-alphabet' needs source 'omniglot', got 'stripes'" in capsys.readouterr().err


def test_the_source_registry_names_its_sources_and_checks_what_it_loads(monkeypatch):
    from tasks import sources

    assert sources.source_names()[0] == "synthetic"  # the default source comes first
    assert sources.source_class("folder") is FolderSource
    with pytest.raises(ValueError, match=r"got 'omniglott'; did you mean 'omniglot'\?$"):
        sources.source_class("omniglott")
    with pytest.raises(ValueError, match=r"got 7$"):
        sources.check_source_name(7)
    monkeypatch.setitem(sources._SOURCES, "glyphs", "tasks.synthetic:SyntheticSource")
    with pytest.raises(TypeError, match="registered as source 'glyphs' but its kind is 'synthetic'"):
        sources.source_class("glyphs")
