"""Synthetic glyph source: hundreds of procedurally drawn stroke characters, no download.

Class ``i`` depends only on ``(seed, i)``, so a larger ``classes`` count keeps the smaller
set's classes unchanged. Every 20 consecutive classes form one "alphabet" (the group key).

With ``channels`` 3 (``data.channels: 3``) the same drawings come in colour: each class has its
own pen and background colours (:func:`tasks.glyphs.random_palette`, drawn from a stream of its
own, so the shapes are those of the grey glyphs) and each drawing shifts them a little. The grey
glyphs' digests are those of before colour existed, so their datasets keep their fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from tasks import glyphs
from tasks.say import Say
from tasks.source import ClassInfo, Source

if TYPE_CHECKING:
    from tasks.build import BuildSpec

GENERATOR_VERSION = 1  # bump whenever the drawing changes, so old fingerprints go stale
CLASSES_PER_ALPHABET = 20
_KEY_PREFIX = "glyph_"
_COLOUR_STREAM = 1  # the third seed word of a class's colours (its shapes use the first two)


class SyntheticSource(Source):
    """``classes`` glyph classes with ``images_per_class`` drawings each, ``image_size`` pixels
    square, deterministic given ``seed``."""

    kind = "synthetic"
    path_use = "unused"
    path_note = "it draws its images"
    settings = ("synthetic_classes", "synthetic_images_per_class")

    def __init__(
        self, classes: int = 400, images_per_class: int = 20, image_size: int = 28, seed: int = 0, channels: int = 1
    ) -> None:
        if classes < 1 or images_per_class < 1 or image_size < 4 or channels not in (1, 3):
            raise ValueError(
                f"synthetic source needs classes >= 1, images_per_class >= 1, image_size >= 4 and channels 1 or 3, "
                f"got {classes}, {images_per_class}, {image_size}, {channels}"
            )
        self.num_classes = classes
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.seed = seed
        self.channels = channels

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> SyntheticSource:
        """Colour glyphs when ``data.channels`` is 3, grey ones otherwise (``auto`` finds them grey)."""
        channels = 3 if spec.channels == 3 else 1
        return cls(spec.synthetic_classes, spec.synthetic_images_per_class, spec.image_size, spec.seed, channels)

    @property
    def location(self) -> None:
        return None

    def classes(self) -> list[ClassInfo]:
        return [
            ClassInfo(key=f"{_KEY_PREFIX}{i:05d}", group=f"alphabet_{i // CLASSES_PER_ALPHABET:03d}")
            for i in range(self.num_classes)
        ]

    def images(self, key: str) -> list[np.ndarray]:
        return list(self.class_images(_class_index(key, self.num_classes)))

    def class_images(self, index: int) -> np.ndarray:
        """The drawings of class ``index`` as one ``uint8 [images_per_class, size, size]`` array
        (``[images_per_class, size, size, 3]`` in colour)."""
        rng = np.random.default_rng([self.seed, index])
        ink = glyphs.glyph_images(glyphs.random_glyph(rng), self.images_per_class, self.image_size, rng)
        if self.channels == 1:
            return ink
        paint = np.random.default_rng([self.seed, index, _COLOUR_STREAM])
        return glyphs.colour_images(ink, glyphs.random_palette(paint), paint)

    def digest(self) -> str:
        """Hash of the generator version and its parameters (the images follow from them)."""
        params = {
            "generator": GENERATOR_VERSION,
            "classes": self.num_classes,
            "images_per_class": self.images_per_class,
            "image_size": self.image_size,
            "seed": self.seed,
            **({"channels": self.channels} if self.channels != 1 else {}),
        }
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _class_index(key: str, count: int) -> int:
    digits = key.removeprefix(_KEY_PREFIX)
    if key == digits or not digits.isdigit() or int(digits) >= count:
        raise KeyError(f"synthetic source has no class {key!r} (keys are {_KEY_PREFIX}00000..{count - 1:05d})")
    return int(digits)
