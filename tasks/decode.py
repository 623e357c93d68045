"""Decode any image Pillow opens into the dataset's range: ``uint8 H x W`` (grey) or ``H x W x 3``.

Every mode is mapped by what its values mean, never clipped: 16-bit grey (``I;16``, ``I;16B``
...) is scaled by 255/65535; 32-bit integer ``I`` is read as 16-bit when its values fit in
0..65535 (how Pillow opens 16-bit TIFFs) and stretched from its own minimum and maximum
otherwise; float ``F`` is read as 0..1 when it fits there, as 0..255 when it fits there, and
stretched otherwise. 1-bit becomes 0/255; palette images take their colours; CMYK, YCbCr, LAB
and HSV become RGB; an alpha channel (LA, RGBA, PA, a palette's transparency) is composited
onto white, as the image shows on a page. The EXIF orientation of a photo is applied. Each
decode says which conversion it applied (None when the pixels are stored as they are), so a
build can report them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

_AS_IS = {"L", "RGB"}
_GREY_ALPHA = {"LA", "La"}
_COLOUR_ALPHA = {"RGBA", "RGBa", "PA"}
_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
UINT16_MAX = 65535
EXIF_ORIENTATION = 0x0112


class Unreadable(Exception):
    """Pillow cannot open or decode a file (the message says why)."""


@lru_cache(maxsize=1)
def image_extensions() -> tuple[str, ...]:
    """File extensions of every format Pillow can open here (stub formats without a decoder left out)."""
    Image.init()
    readable = {
        fmt
        for fmt, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in readable))


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """The image in ``path`` decoded (see the module docstring) and the conversion applied."""
    try:
        with Image.open(path) as image:
            image.load()
            return decode(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Unreadable(str(exc) or type(exc).__name__) from exc


def decode(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """``image`` as ``uint8 H x W`` or ``H x W x 3`` and the conversion applied (None if none)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        array, note = _pixels(ImageOps.exif_transpose(image))
        return array, "EXIF orientation applied" + (f", {note}" if note else "")
    return _pixels(image)


def is_grey(array: np.ndarray) -> bool:
    """Whether a decoded image is grey: one channel, or three equal ones."""
    if array.ndim == 2:
        return True
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]))


def _pixels(image: Image.Image) -> tuple[np.ndarray, str | None]:
    mode = image.mode
    if mode in _AS_IS:
        return np.asarray(image), None
    if mode == "1":
        return np.asarray(image.convert("L")), "1-bit to 0/255"
    if mode == "P":
        if image.has_transparency_data:
            return _on_white(image, "RGB"), "palette with transparency onto white"
        return np.asarray(image.convert("RGB")), "palette to RGB"
    if mode in _GREY_ALPHA:
        return _on_white(image, "L"), f"{mode} alpha onto white"
    if mode in _COLOUR_ALPHA:
        return _on_white(image, "RGB"), f"{mode} alpha onto white"
    if mode in _TO_RGB:
        return np.asarray(image.convert("RGB")), f"{mode} to RGB"
    if mode.startswith("I;16"):
        return _scale_16bit(np.asarray(image)), f"16-bit {mode} scaled to 0-255"
    if mode == "I":
        values = np.asarray(image)
        if values.min() >= 0 and values.max() <= UINT16_MAX:
            return _scale_16bit(values), "32-bit I (16-bit values) scaled to 0-255"
        return _stretch(values), "32-bit I stretched from its range to 0-255"
    if mode == "F":
        return _float(np.asarray(image))
    raise Unreadable(f"image mode {mode!r} has no conversion to grey or RGB")


def _on_white(image: Image.Image, mode: str) -> np.ndarray:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert(mode))


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounded (65535 = 255 * 257)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)


def _float(values: np.ndarray) -> tuple[np.ndarray, str]:
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(finite * 255.0).astype(np.uint8), "float F (0-1) scaled to 0-255"
    if low >= 0.0 and high <= 255.0:
        return np.rint(finite).astype(np.uint8), "float F (0-255) rounded"
    return _stretch(finite), "float F stretched from its range to 0-255"
