"""Procedural stroke glyphs: random characters drawn with jittered, anti-aliased pen strokes.

A glyph class is 2-4 strokes, each a cubic Bezier curve or a polyline through four control
points (later strokes often start on an earlier one, as in handwriting). An instance of the
class moves every control point a little, shifts each stroke, varies the pen width and
applies a small random affine map, the way different people draw the same character.

Rendering is vectorised over a batch of images: each stroke is sampled at fixed parameter
values, every sample point becomes a Gaussian pen dab weighted by the arc length it covers
(so the ink does not depend on how fast the curve is traversed), and because a Gaussian is
separable the whole image is one ``[H, P] @ [P, W]`` product. The summed profile is clipped
into a solid stroke with soft edges at twice the target size, then 2x2 box-downsampled.
Strokes are bright (255) on a dark (0) background, as the Omniglot source stores them.
Colour glyphs paint those drawings: the ink in a class's pen colour over its background colour
(:func:`colour_images`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

MAX_STROKES = 4
POINTS_PER_STROKE = 32  # sample spacing stays near the pen width, where the dabs blend
SUPERSAMPLE = 2
_INK_GAIN = 2.0  # profile >= 1/gain is solid ink: a core about 2.4 sigma wide


@dataclass(frozen=True)
class GlyphClass:
    """One character: control points ``[strokes, 4, 2]`` (x, y in the unit square), which
    strokes are polylines (``[strokes]`` bool) and the pen width (Gaussian sigma, unit units)."""

    points: np.ndarray
    polyline: np.ndarray
    pen: float


def _basis(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``[count, 4]`` mapping four control points to sample points: cubic Bezier and
    piecewise-linear (polyline through all four points)."""
    t = np.linspace(0.0, 1.0, count)
    bezier = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)
    u = t * 3.0
    segment = np.minimum(u.astype(int), 2)
    frac = u - segment
    polyline = np.zeros((count, 4))
    polyline[np.arange(count), segment] = 1.0 - frac
    polyline[np.arange(count), segment + 1] = frac
    return bezier, polyline


def random_glyph(rng: np.random.Generator) -> GlyphClass:
    """Draw one glyph class: strokes as random walks of control points, fitted to the box."""
    strokes = int(rng.integers(2, MAX_STROKES + 1))
    points = np.zeros((strokes, 4, 2))
    for s in range(strokes):
        if s > 0 and rng.random() < 0.6:  # start on an earlier stroke's control point
            start = points[rng.integers(s), rng.integers(4)]
        else:
            start = rng.uniform(0.2, 0.8, size=2)
        heading = rng.uniform(0.0, 2 * np.pi)
        points[s, 0] = start
        for k in range(1, 4):
            heading += rng.normal(0.0, 1.1)
            step = rng.uniform(0.12, 0.35)
            points[s, k] = np.clip(points[s, k - 1] + step * np.array([np.cos(heading), np.sin(heading)]), 0.05, 0.95)
    lo = points.reshape(-1, 2).min(axis=0)
    hi = points.reshape(-1, 2).max(axis=0)
    scale = min(0.7 / max(float((hi - lo).max()), 1e-6), 2.5)
    return GlyphClass(
        points=(points - (lo + hi) / 2) * scale + 0.5,
        polyline=rng.random(strokes) < 0.4,
        pen=float(rng.uniform(0.022, 0.032)),
    )


@dataclass(frozen=True)
class Variation:
    """How much instances of one glyph differ (lengths in unit-square units, angle in radians)."""

    point: float = 0.045  # std of each control point's offset
    stroke: float = 0.035  # std of each stroke's offset
    shift: float = 0.045  # std of the whole glyph's offset
    angle: float = 0.2  # std of the rotation
    shear: float = 0.2  # shear drawn from [-shear, shear]
    scale: tuple[float, float] = (0.78, 1.1)  # per-axis scale range
    pen: tuple[float, float] = (0.75, 1.35)  # pen width factor range


def _instances(
    glyph: GlyphClass, count: int, rng: np.random.Generator, var: Variation
) -> tuple[np.ndarray, np.ndarray]:
    """Jittered control points ``[count, strokes, 4, 2]`` and pen widths ``[count]``."""
    strokes = glyph.points.shape[0]
    pts = glyph.points[None] + rng.normal(0.0, var.point, size=(count, strokes, 4, 2))
    pts += rng.normal(0.0, var.stroke, size=(count, strokes, 1, 2))
    angle = rng.normal(0.0, var.angle, size=count)
    shear = rng.uniform(-var.shear, var.shear, size=count)
    sx, sy = rng.uniform(*var.scale, size=(2, count))
    cos, sin = np.cos(angle), np.sin(angle)
    affine = np.stack(
        [np.stack([cos * sx, (cos * shear - sin) * sy], -1), np.stack([sin * sx, (sin * shear + cos) * sy], -1)],
        axis=1,
    )  # rotation @ shear @ scale, [count, 2, 2]
    shift = rng.normal(0.0, var.shift, size=(count, 1, 1, 2))
    pts = np.einsum("nij,nskj->nski", affine, pts - 0.5) + 0.5 + shift
    pens = glyph.pen * rng.uniform(*var.pen, size=count)
    return pts, pens


def render(points: np.ndarray, polyline: np.ndarray, pens: np.ndarray, size: int) -> np.ndarray:
    """Render strokes to ``uint8 [n, size, size]`` (255 = ink).

    ``points``: ``[n, S, 4, 2]`` control points (x, y) in the unit square, ``polyline``:
    ``[S]`` bool (polyline or Bezier), ``pens``: ``[n]`` Gaussian pen widths in unit units.
    """
    bezier, poly = _basis(POINTS_PER_STROKE)
    basis = np.where(polyline[:, None, None], poly[None], bezier[None])  # [S, T, 4]
    samples = np.einsum("stk,nskd->nstd", basis, points)  # [n, S, T, 2]
    step = np.linalg.norm(np.diff(samples, axis=2), axis=-1)  # [n, S, T-1]
    weight = np.zeros(samples.shape[:3])
    weight[..., 1:] += step / 2
    weight[..., :-1] += step / 2  # trapezoid arc length around each sample
    n = points.shape[0]
    samples = samples.reshape(n, -1, 2).astype(np.float32)
    res = size * SUPERSAMPLE
    grid = ((np.arange(res) + 0.5) / res).astype(np.float32)
    inv = (-0.5 / pens**2).astype(np.float32)[:, None, None]
    gx = np.exp(inv * (grid[None, None, :] - samples[:, :, 0:1]) ** 2)  # [n, P, W]
    gy = np.exp(inv * (grid[None, None, :] - samples[:, :, 1:2]) ** 2)  # [n, P, H]
    gy *= (weight.reshape(n, -1) / (np.sqrt(2 * np.pi) * pens[:, None])).astype(np.float32)[:, :, None]
    profile = np.matmul(gy.transpose(0, 2, 1), gx)  # [n, H, W]: 1.0 on a stroke's centre line
    ink = np.clip(profile * _INK_GAIN, 0.0, 1.0)
    ink = ink.reshape(n, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    return np.rint(ink * 255.0).astype(np.uint8)


def glyph_images(
    glyph: GlyphClass, count: int, size: int, rng: np.random.Generator, variation: Variation = Variation()
) -> np.ndarray:
    """``count`` drawings of ``glyph`` as ``uint8 [count, size, size]``."""
    points, pens = _instances(glyph, count, rng, variation)
    return render(points, glyph.polyline, pens, size)


@dataclass(frozen=True)
class Palette:
    """The colours of one colour glyph class: its pen and its background, RGB in [0, 1]."""

    pen: np.ndarray  # [3]
    background: np.ndarray  # [3]


def random_palette(rng: np.random.Generator) -> Palette:
    """A bright, saturated pen colour on a dark background of another hue: the ink stays the
    brightest part of the image, as in the grey glyphs, whatever the hues."""
    hue = rng.uniform(0.0, 1.0)
    pen = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.8, 1.0))
    ground = colorsys.hsv_to_rgb((hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.4))
    return Palette(np.array(pen), np.array(ground))


def colour_images(ink: np.ndarray, palette: Palette, rng: np.random.Generator) -> np.ndarray:
    """Grey glyph drawings ``uint8 [n, H, W]`` (255 = ink) painted in ``palette``: ``uint8 [n, H, W, 3]``.

    Each instance shifts both colours a little and lays a gentle linear shading in a random
    direction over its background, so no two drawings share their exact colours.
    """
    n, height, width = ink.shape
    pen = np.clip(palette.pen + rng.normal(0.0, 0.04, size=(n, 3)), 0.0, 1.0)
    ground = np.clip(palette.background + rng.normal(0.0, 0.05, size=(n, 3)), 0.0, 1.0)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    y, x = np.meshgrid(np.linspace(-0.5, 0.5, height), np.linspace(-0.5, 0.5, width), indexing="ij")
    ramp = np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y  # [n, H, W] in [-0.71, 0.71]
    strength = rng.uniform(0.05, 0.15, size=(n, 1, 1, 1))
    shade = strength * ramp[..., None]
    background = np.clip(ground[:, None, None, :] + shade, 0.0, 1.0)
    alpha = (ink.astype(np.float32) / 255.0)[..., None]
    image = background * (1.0 - alpha) + pen[:, None, None, :] * alpha
    return np.rint(image * 255.0).astype(np.uint8)
