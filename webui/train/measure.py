"""Reads a generated shapes picture back: background colour, shape colour and shape class.

The measure is deliberately simple so that a person can check it by eye:

1. **Background** = the median colour of the image border (2-pixel frame), named by the nearest
   palette colour (:data:`webui.train.data.COLOURS`, Euclidean distance in RGB).
2. **Shape mask** = the pixels whose colour is far (> 80 in RGB distance) from the background;
   one 3x3 erosion drops antialiased edge pixels before the shape colour is taken as the median
   of what remains, again named by the nearest palette colour.
3. **Shape class** from two numbers of the mask:
   - *fill* = mask area / area of its bounding box (circle pi/4 = 0.79, square 1.0, triangle
     0.5, star about 0.4, heart about 0.7);
   - *solidity* = mask area / area of its convex hull (1.0 for the convex circle, square and
     triangle; lower for the star's five notches and the heart's dip at the top).
   - *drop* = height of the mask's centre of mass in its bounding box (0 top, 1 bottom): an
     upward triangle is bottom-heavy (about 0.6), a heart top-heavy (about 0.45).
   Rules, in order: solidity < 0.7 -> star; fill > 0.88 -> square; fill > 0.71 -> circle;
   drop > 0.53 -> triangle; otherwise heart. On clean renders of the training data these rules
   name every shape correctly (``tests/test_train_data.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from webui.train.data import COLOURS

MASK_DISTANCE = 80.0
MIN_AREA_FRACTION = 0.005


@dataclass(frozen=True)
class Reading:
    """What :func:`read_image` sees; ``shape`` is None when no shape stands out from the background."""

    background: str
    colour: str | None
    shape: str | None
    fill: float
    solidity: float
    drop: float
    area_fraction: float


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb[None]) ** 2).sum(axis=1)))]


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (a pixel stays if it and its 8 neighbours are set)."""
    padded = np.pad(mask, 1)
    out = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain, then the shoelace formula)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return 0.0
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and _cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in pts[::-1]:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def classify(fill: float, solidity: float, drop: float) -> str:
    """Shape class from the three mask numbers (see the module docstring)."""
    if solidity < 0.7:
        return "star"
    if fill > 0.88:
        return "square"
    if fill > 0.71:
        return "circle"
    return "triangle" if drop > 0.53 else "heart"


def read_image(image: Image.Image) -> Reading:
    """Background colour, shape colour and shape class of a one-shape picture."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = rgb.shape
    border = np.concatenate(
        [rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)]
    )
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    mask = np.sqrt(((rgb - background_rgb) ** 2).sum(axis=2)) > MASK_DISTANCE
    area = int(mask.sum())
    if area < MIN_AREA_FRACTION * h * w:
        return Reading(background, None, None, 0.0, 0.0, 0.0, area / (h * w))
    core = _erode(mask)
    colour_pixels = rgb[core] if core.sum() >= 4 else rgb[mask]
    colour = nearest_colour(np.median(colour_pixels, axis=0))
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    fill = area / float(height * (xs.max() - xs.min() + 1))
    drop = float((ys.mean() - ys.min() + 0.5) / height)
    # Each mask pixel is a unit square: its four corners enter the hull, so the hull covers the pixels.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    hull = convex_hull_area(corners)
    solidity = area / hull if hull > 0 else 0.0
    return Reading(background, colour, classify(fill, solidity, drop), fill, solidity, drop, area / (h * w))
