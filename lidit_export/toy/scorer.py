"""Reads a generated image and checks every attribute its caption states, with plain image analysis.

Objects are the saturated pixels (backgrounds are neutral greys). Each object is looked for in the zone
its layout gives it (the whole canvas for a single object, a half for a pair, a third for a row):
- color:    the palette colour most of the zone's saturated pixels are nearest to
- shape:    fill ratio of those pixels in their bounding box (square ~1.0, circle ~0.79, triangle ~0.5)
- size:     equivalent radius of the area for the detected shape, against the layout's small/large midpoint
- position: (single) the centroid of the object lies in the stated region
- relation: (pair/row) the centroids of the objects' colours come in the stated order along the axis
An attribute of an object that is not found (fewer than MIN_PIXELS) is wrong.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .scenes import CANVAS, COLORS, RADIUS, ROW_X, SQUARE_HALF, TRIANGLE_R, Scene

MIN_PIXELS = 12
SATURATION = 0.3  # max - min of RGB; anti-aliased edges below half coverage fall out
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)
_AREA_PER_R2 = {"circle": math.pi, "square": (2 * SQUARE_HALF) ** 2, "triangle": 3 * math.sqrt(3) / 4 * TRIANGLE_R ** 2}
KINDS = ("color", "shape", "size", "position", "relation")


@dataclass(frozen=True)
class Check:
    kind: str
    third: str  # where in the caption the attribute is stated
    correct: bool


def _zone(scene: Scene, index: int) -> tuple[slice, slice]:
    """(rows, cols) where object `index` must be."""
    full = slice(0, CANVAS)
    half = CANVAS // 2
    if scene.layout == "single":
        return full, full
    if scene.layout == "pair":
        first = slice(0, half) if index == 0 else slice(half, CANVAS)
        return (full, first) if scene.relation == "horizontal" else (first, full)
    edges = [0, (ROW_X[0] + ROW_X[1]) // 2, (ROW_X[1] + ROW_X[2]) // 2, CANVAS]
    return full, slice(edges[index], edges[index + 1])


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: palette index of saturated pixels, -1 for background."""
    rgb = image.astype(np.float32) / 255.0
    saturated = rgb.max(-1) - rgb.min(-1) > SATURATION
    nearest = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    return np.where(saturated, nearest, -1)


def _shape_of(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box
    return "square" if fill > 0.9 else ("circle" if fill > 0.64 else "triangle")


def _centroid(mask: np.ndarray) -> tuple[float, float] | None:
    if mask.sum() < MIN_PIXELS:
        return None
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


_REGIONS = {  # centroid regions of a single object; the layout puts it 16 px from the centre (or at it)
    "left": lambda x, y: x < 26 and abs(y - 32) < 10, "right": lambda x, y: x > 38 and abs(y - 32) < 10,
    "top": lambda x, y: y < 26 and abs(x - 32) < 10, "bottom": lambda x, y: y > 38 and abs(x - 32) < 10,
    "centre": lambda x, y: abs(x - 32) < 8 and abs(y - 32) < 8,
}


def _position_ok(where: str, centroid: tuple[float, float] | None) -> bool:
    return centroid is not None and _REGIONS[where](*centroid)


def score_image(image: np.ndarray, scene: Scene) -> list[Check]:
    """Every stated attribute of `scene` checked on `image` ((64, 64, 3) uint8)."""
    if image.shape[:2] != (CANVAS, CANVAS):
        raise ValueError(f"the scorer reads {CANVAS}x{CANVAS} images, got {image.shape[:2]}; generate at that size")
    labels = classify_pixels(image)
    found = []
    for i in range(len(scene.objects)):
        rows, cols = _zone(scene, i)
        zone = labels[rows, cols]
        colours = zone[zone >= 0]
        if colours.size < MIN_PIXELS:
            found.append(None)
            continue
        colour = int(np.bincount(colours).argmax())
        mask = zone == colour
        found.append((_NAMES[colour], _shape_of(mask), mask))
    checks = []
    for a in scene.attributes:
        obj = scene.objects[a.obj]
        got = found[a.obj]
        if a.kind == "relation":
            ok = _order_ok(labels, scene)
        elif a.kind == "position":
            ok = got is not None and _position_ok(a.value, _centroid(labels >= 0))
        elif got is None:
            ok = False
        elif a.kind == "color":
            ok = got[0] == obj.color
        elif a.kind == "shape":
            ok = got[1] == obj.shape
        elif a.kind == "size":
            radius = math.sqrt(got[2].sum() / _AREA_PER_R2[got[1]])
            r = RADIUS[scene.layout]
            ok = (radius > (r["small"] + r["large"]) / 2) == (obj.size == "large")
        else:
            raise ValueError(f"unknown attribute kind {a.kind!r}")
        checks.append(Check(a.kind, a.third, bool(ok)))
    return checks


def _order_ok(labels: np.ndarray, scene: Scene) -> bool:
    """The objects' colours appear in the scene's order along its axis, at least 1/8 canvas apart."""
    axis = 1 if scene.relation in ("horizontal", "row") else 0  # 1: compare x, 0: compare y
    positions = []
    for o in scene.objects:
        c = _centroid(labels == _NAMES.index(o.color))
        if c is None:
            return False
        positions.append(c[0] if axis == 1 else c[1])
    return all(b - a > CANVAS / 8 for a, b in zip(positions, positions[1:]))


def summarize(checks_per_image: list[list[Check]]) -> dict:
    """Accuracy overall, per attribute kind, per caption third, per kind x third; counts alongside."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for checks in checks_per_image:
        for c in checks:
            for key in ("all", c.kind, f"third:{c.third}", f"{c.kind}:{c.third}"):
                tally[key][0] += c.correct
                tally[key][1] += 1
    full = sum(all(c.correct for c in checks) for checks in checks_per_image)
    out = {k: {"accuracy": hits / n, "count": n} for k, (hits, n) in sorted(tally.items())}
    out["all_correct_images"] = {"accuracy": full / max(len(checks_per_image), 1), "count": len(checks_per_image)}
    return out


def score_images(images: np.ndarray, scenes: list[Scene]) -> dict:
    return summarize([score_image(img, s) for img, s in zip(images, scenes)])
