"""The real Omniglot build: the Vinyals/ProtoNet split with rotations (needs ../shared/data/omniglot)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.store import DatasetStore

pytestmark = pytest.mark.omniglot


@pytest.mark.slow  # ~20 s: builds all 6,492 rotated classes; test_omniglot_by_alphabet builds from the zips by default
def test_omniglot_random_split_with_rotations(tmp_path, tasks_omniglot_dir):
    spec = BuildSpec(source="omniglot", path=str(tasks_omniglot_dir), rotations=True)
    manifest = build_dataset(spec, tmp_path / "omniglot")
    splits = manifest["splits"]
    assert {name: s["classes"] for name, s in splits.items()} == {"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4}
    assert sum(s["classes"] for s in splits.values()) == 6492
    assert sum(s["images"] for s in splits.values()) == 129_840
    assert all(s["min_images_per_class"] == s["max_images_per_class"] == 20 for s in splits.values())
    assert manifest["image_shape"] == [1, 28, 28] and manifest["build"]["test_classes"] == 423

    base = {name: {n.split("/rot")[0] for n in s["class_names"]} for name, s in splits.items()}
    assert not (base["train"] & base["val"] or base["train"] & base["test"] or base["val"] & base["test"])

    test = DatasetStore.open(tmp_path / "omniglot").split("test")
    assert test.images.shape == (33_840, 1, 28, 28)
    ink = test.images.mean(axis=(1, 2, 3))
    assert np.median(ink) < 60  # bright strokes on a dark background, not the other way round
    first = test.class_images(0)
    assert np.array_equal(np.rot90(first, 1, axes=(2, 3)), test.class_images(1))  # "/rot90" copy
    batch = EpisodeSampler(test, EpisodeSpec(ways=20, shots=5, query=15), tasks=4).sample()
    assert batch.query_x.shape == (4, 300, 1, 28, 28)


def test_omniglot_by_alphabet(tmp_path, tasks_omniglot_dir):
    spec = BuildSpec(source="omniglot", path=str(tasks_omniglot_dir), split="by-alphabet", image_size=14)
    splits = build_dataset(spec, tmp_path / "lake")["splits"]
    assert {name: s["classes"] for name, s in splits.items()} == {"train": 792, "val": 172, "test": 659}
    assert all(n.startswith("images_evaluation/") for n in splits["test"]["class_names"])
