"""A deterministic checker for demo-model pictures: which colour, shape, position and style does an
image show? No weights: colour distances, a foreground mask and its geometry.

* background = median colour of the border pixels; foreground = pixels far from it,
  closed (dilate then erode) so striped shapes become solid;
* colour = named colour nearest to the median foreground colour;
* shape = from the mask's fill ratio of its bounding box (square ~1, circle ~pi/4,
  triangle ~1/2, star ~0.3), its aspect and the row where it is widest (triangle: the base);
* position = where the mask's centroid is; stripes = how often the colour flips inside the mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loraflow.demo.shapes import BACKGROUNDS, COLOURS, POSITIONS, Scene

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as "drawn"


@dataclass(frozen=True)
class Reading:
    colour: str | None
    shape: str | None
    position: str | None
    background: str
    stripes: float  # fraction of colour flips along rows inside the shape (0 plain, ~0.3+ striped)
    fill: float  # mask area / bounding-box area

    def matches(self, scene: Scene) -> dict[str, bool]:
        return {"colour": self.colour == scene.colour, "shape": self.shape == scene.shape,
                "position": self.position == scene.position, "background": self.background == scene.background}


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    return min(table, key=lambda name: float(np.linalg.norm(rgb - np.asarray(table[name], dtype=np.float64))))


def _shift_or(mask: np.ndarray, op) -> np.ndarray:
    """One 3x3 dilation (op=np.logical_or) or erosion (op=np.logical_and) step."""
    padded = np.pad(mask, 1, constant_values=op is np.logical_and)
    out = padded[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out = op(out, padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx])
    return out


def closed(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    for _ in range(steps):
        mask = _shift_or(mask, np.logical_or)
    for _ in range(steps):
        mask = _shift_or(mask, np.logical_and)
    return mask


def read_image(image) -> Reading:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    h, w, _ = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    background = _nearest(bg, BACKGROUNDS)
    drawn = np.linalg.norm(a - bg, axis=2) > FOREGROUND_DISTANCE  # (H, W)
    mask = closed(drawn)
    if mask.sum() < max(4, h * w // 400):
        return Reading(None, None, None, background, 0.0, 0.0)
    colour = _nearest(np.median(a[drawn if drawn.any() else mask], axis=0), COLOURS)
    ys, xs = np.nonzero(mask)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = float(mask.sum()) / float(box_h * box_w)
    aspect = box_w / box_h
    if fill > 0.88 and 0.75 < aspect < 1.33:
        shape = "square"
    elif fill > 0.66:
        shape = "circle"
    else:  # triangle or star: a triangle is widest at its base, a star at its arms (~40% down)
        rows = mask[ys.min():ys.max() + 1].sum(axis=1).astype(np.float64)
        widest = np.nonzero(rows >= 0.95 * rows.max())[0].mean() / max(1, box_h - 1)
        shape = "triangle" if widest > 0.7 and fill > 0.36 else "star"
    cy, cx = ys.mean() / h, xs.mean() / w
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    inside = drawn & mask
    flips = np.logical_xor(inside[:, 1:], inside[:, :-1]) & mask[:, 1:] & mask[:, :-1]
    stripes = float(flips.sum()) / float(max(1, (mask[:, 1:] & mask[:, :-1]).sum()))
    return Reading(colour, shape, position, background, stripes, fill)


def accuracy(pairs) -> dict[str, float]:
    """`pairs` of (image, Scene) -> fraction correct per attribute."""
    counts: dict[str, int] = {}
    n = 0
    for image, scene in pairs:
        n += 1
        for key, ok in read_image(image).matches(scene).items():
            counts[key] = counts.get(key, 0) + int(ok)
    return {key: value / max(1, n) for key, value in counts.items()}
