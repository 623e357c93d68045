"""Fakes of the mini-ImageNet / tiered-ImageNet layout (``images/`` plus ``train.csv``, ``val.csv``,
``test.csv`` of ``filename,label``) for the tests: a few tiny colour PNGs per class, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# The standard mini-ImageNet split (Ravi & Larochelle 2017): classes per split.
MINI_IMAGENET_CLASSES = {"train": 64, "val": 16, "test": 20}


def write_layout(
    root: Path, classes: dict[str, int], images: int, size: int = 6, seed: int = 0
) -> dict[str, list[str]]:
    """Write ``classes[split]`` classes of ``images`` random RGB ``size`` x ``size`` PNGs each, named
    as mini-ImageNet names them (``n<wnid><index>.png``, label ``n<wnid>``); returns split -> labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    labels: dict[str, list[str]] = {}
    wnid = 1000000
    for split, count in classes.items():
        rows = ["filename,label"]
        labels[split] = []
        for _ in range(count):
            wnid += 7
            label = f"n{wnid:08d}"
            labels[split].append(label)
            for index in range(images):
                name = f"{label}{index:08d}.png"
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return labels
