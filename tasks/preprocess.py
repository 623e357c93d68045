"""Turn source images into the stored layout: ``uint8 [C, size, size]``, plus rotated copies.

Resizing uses PIL's LANCZOS filter (anti-aliased downsampling); non-square images are
stretched to the square. Colour conversion uses PIL (ITU-R 601-2 luma for RGB -> gray;
gray -> RGB repeats the channel). Rotations are exact ``np.rot90`` turns of the resized
image, counter-clockwise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_FILTER = "lanczos"
ROTATIONS = (0, 90, 180, 270)


def prepare(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``image`` (``uint8 H x W`` or ``H x W x 3``) as ``uint8 [channels, size, size]``."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 H x W or H x W x 3 image, got {image.dtype} {image.shape}")
    if image.ndim == 2 and channels == 1 and image.shape == (size, size):
        return image[None].copy()
    pil = Image.fromarray(image).convert("L" if channels == 1 else "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(pil)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def rotated(images: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(degrees, images turned by degrees)`` for each of :data:`ROTATIONS`; ``images`` is
    ``[n, C, H, W]`` (square)."""
    return [(deg, np.ascontiguousarray(np.rot90(images, k=deg // 90, axes=(2, 3)))) for deg in ROTATIONS]
