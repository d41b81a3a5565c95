"""A procedural world for the miniature LI-DiT: one to three flat shapes on grey backgrounds, with
captions from templates that vary word order, and a renderer that draws a batch of scenes at once.

Every caption carries the word index of each attribute it states (colour, shape, size, position,
relation), so the scorer can report accuracy by where in the caption the attribute was said.
Scenes are drawn from a seeded `random.Random`; nothing is downloaded.

Layouts on a 64 x 64 canvas (pixel units; y grows downwards):
    single  one object at left / right / top / bottom / centre
    pair    A left of B (horizontal) or A above B (vertical), distinct colours
    row     three objects left -> centre -> right, distinct colours
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

CANVAS = 64
COLORS = {  # saturated colours; backgrounds are neutral greys so the scorer can tell them apart
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.72, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.60, 0.15, 0.80), "orange": (1.00, 0.55, 0.05),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITIONS = ("left", "right", "top", "bottom", "centre")
POSITION_WORDS = {"left": ("on the left", "at the left side"), "right": ("on the right", "at the right side"),
                  "top": ("at the top", "near the top"), "bottom": ("at the bottom", "near the bottom"),
                  "centre": ("in the centre", "in the middle")}
CENTRES = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "centre": (32, 32)}
ROW_X = (11, 32, 53)
RADIUS = {"single": {"small": 6.0, "large": 10.0}, "pair": {"small": 6.0, "large": 10.0},
          "row": {"small": 5.0, "large": 8.0}}
HELD_OUT_EVERY = 8  # captions whose hash falls in 1/8 of the space are never used for training


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str
    x: float
    y: float
    radius: float
    size_stated: bool = True


@dataclass
class Attribute:
    kind: str  # color | shape | size | position | relation
    obj: int  # index of the object it belongs to (the first one for relations)
    value: str
    word: int  # index of the word that states it
    num_words: int

    @property
    def third(self) -> str:
        """Where the attribute is said: first / middle / last third of the caption's words."""
        f = self.word / max(self.num_words - 1, 1)
        return "first" if f < 1 / 3 else ("last" if f > 2 / 3 else "middle")


@dataclass
class Scene:
    layout: str  # single | pair | row
    objects: list[SceneObject]
    background: tuple[float, float, str]  # grey levels (a, b) and split: "none" | "horizontal" | "vertical"
    relation: str = ""  # single: the position; pair: "horizontal" | "vertical"; row: "row"
    caption: str = ""
    attributes: list[Attribute] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> "Scene":
        d = json.loads(line)
        return cls(d["layout"], [SceneObject(**o) for o in d["objects"]], tuple(d["background"]), d["relation"],
                   d["caption"], [Attribute(**a) for a in d["attributes"]])


def is_held_out(caption: str) -> bool:
    return hashlib.sha1(caption.encode()).digest()[0] % HELD_OUT_EVERY == 0


class _Words:
    """Builds a caption word by word, remembering which word states which attribute."""

    def __init__(self):
        self.words: list[str] = []
        self.tags: list[tuple[str, int, str, int]] = []

    def add(self, text: str, tag: tuple[str, int, str] | None = None) -> None:
        if tag is not None:
            self.tags.append((*tag, len(self.words)))
        self.words.extend(text.split())

    def comma(self) -> None:
        self.words[-1] += ","

    def finish(self) -> tuple[str, list[Attribute]]:
        words = [("an" if x == "a" and nxt[0] in "aeiou" else x) for x, nxt in zip(self.words, self.words[1:] + ["."])]
        words[-1] = words[-1].rstrip(",")
        return " ".join(words), [Attribute(k, o, v, w, len(words)) for k, o, v, w in self.tags]


def _noun_phrase(w: _Words, i: int, o: SceneObject, rng: random.Random, allow_comma: bool = True) -> None:
    """'a large red circle' | 'a large circle that is red' | 'a circle in red' | 'a circle, red,'."""
    size = (lambda: w.add(rng.choice(SIZE_WORDS[o.size]), ("size", i, o.size))) if o.size_stated else (lambda: None)
    style = rng.randrange(4 if allow_comma else 3)
    w.add("a")
    if style == 0:
        size()
        w.add(o.color, ("color", i, o.color))
        w.add(o.shape, ("shape", i, o.shape))
    elif style == 1:
        size()
        w.add(o.shape, ("shape", i, o.shape))
        w.add("that is")
        w.add(o.color, ("color", i, o.color))
    elif style == 2:
        size()
        w.add(o.shape, ("shape", i, o.shape))
        w.add("in")
        w.add(o.color, ("color", i, o.color))
    else:
        w.add(o.shape, ("shape", i, o.shape))
        w.comma()
        if o.size_stated:
            w.add(rng.choice(SIZE_WORDS[o.size]), ("size", i, o.size))
            w.add("and")
        w.add(o.color, ("color", i, o.color))
        w.comma()


def _position(w: _Words, i: int, where: str, rng: random.Random, tag_kind: str = "position") -> None:
    phrase = rng.choice(POSITION_WORDS[where])
    *lead, last = phrase.split()
    w.add(" ".join(lead))
    w.add(last, (tag_kind, i, where))


def _caption(scene: Scene, rng: random.Random) -> tuple[str, list[Attribute]]:
    w = _Words()
    objs = scene.objects
    np_ = lambda i, comma=True: _noun_phrase(w, i, objs[i], rng, comma)  # noqa: E731
    if scene.layout == "single":
        where = scene.relation
        t = rng.randrange(3)
        if t == 0:
            np_(0, comma=False)
            _position(w, 0, where, rng)
        elif t == 1:
            _position(w, 0, where, rng)
            w.add("there is")
            np_(0)
        else:
            np_(0)
            w.add("placed")
            _position(w, 0, where, rng)
    elif scene.layout == "pair":
        first, second = ("left", "right") if scene.relation == "horizontal" else ("above", "below")
        rel = ("relation", 0, scene.relation)
        horizontal = first == "left"

        def relation(word: str) -> None:  # "to the left of" | "above"
            w.add("to the" if horizontal else "")
            w.add(word, rel)
            w.add("of" if horizontal else "")

        t = rng.randrange(5)
        if t == 0:  # A left of B
            np_(0, comma=False)
            relation(first)
            np_(1)
        elif t == 1:  # B right of A
            np_(1, comma=False)
            relation(second)
            np_(0)
        elif t == 2:  # to the left of B there is A
            relation(first)
            np_(1, comma=False)
            w.add("there is")
            np_(0)
        elif t == 3:  # A, and B on its right / below it
            np_(0)
            if not w.words[-1].endswith(","):
                w.comma()
            w.add("and")
            np_(1, comma=False)
            if horizontal:
                w.add("on its")
                w.add("right", rel)
            else:
                w.add("below", rel)
                w.add("it")
        else:  # A on the left and B on the right
            np_(0, comma=False)
            _position(w, 0, "left" if horizontal else "top", rng, "relation")
            w.add("and")
            np_(1, comma=False)
            _position(w, 1, "right" if horizontal else "bottom", rng, "unchecked")
    else:  # row
        rel = ("relation", 0, "row")
        t = rng.randrange(3)
        if t == 0:  # A, B and C from left to right
            np_(0, comma=False)
            w.comma()
            np_(1, comma=False)
            w.add("and")
            np_(2, comma=False)
            w.add("from")
            w.add("left", rel)
            w.add("to right")
        elif t == 1:
            w.add("from")
            w.add("left", rel)
            w.add("to right:")
            for i in range(3):
                np_(i, comma=False)
                if i < 2:
                    w.comma()
        else:
            order = [2, 0, 1]
            for k, i in enumerate(order):
                np_(i, comma=False)
                _position(w, i, ("right", "left", "centre")[k], rng, "relation" if i == 0 else "unchecked")
                if k == 0:
                    w.comma()
                elif k == 1:
                    w.add("and")
    caption, attributes = w.finish()
    return caption.replace(" ,", ","), [a for a in attributes if a.kind != "unchecked"]


def sample_scene(rng: random.Random) -> Scene:
    layout = rng.choices(("single", "pair", "row"), weights=(0.3, 0.5, 0.2))[0]
    n = {"single": 1, "pair": 2, "row": 3}[layout]
    colors = rng.sample(list(COLORS), n)
    objects = []
    if layout == "single":
        relation = rng.choice(POSITIONS)
        centres = [CENTRES[relation]]
    elif layout == "pair":
        relation = rng.choice(("horizontal", "vertical"))
        centres = [CENTRES["left"], CENTRES["right"]] if relation == "horizontal" else [CENTRES["top"], CENTRES["bottom"]]
    else:
        relation = "row"
        centres = [(x, 32) for x in ROW_X]
    for color, (cx, cy) in zip(colors, centres):
        size = rng.choice(SIZES)
        jitter = 2.0 if layout != "row" else 1.0
        objects.append(SceneObject(color, rng.choice(SHAPES), size, cx + rng.uniform(-jitter, jitter),
                                   cy + rng.uniform(-jitter, jitter), RADIUS[layout][size] * rng.uniform(0.92, 1.08),
                                   size_stated=rng.random() < 0.5))
    a = rng.uniform(0.12, 0.88)
    split = rng.choice(("none", "none", "horizontal", "vertical"))
    b = a if split == "none" else min(max(a + rng.choice((-1, 1)) * rng.uniform(0.25, 0.45), 0.05), 0.95)
    scene = Scene(layout, objects, (a, b, split), relation)
    scene.caption, scene.attributes = _caption(scene, rng)
    return scene


def sample_scenes(n: int, seed: int, split: str = "train") -> list[Scene]:
    """n scenes whose captions are all in `split` ("train": never held out; "heldout": only held out)."""
    rng = random.Random(f"{seed}-{split}")
    want = split == "heldout"
    out = []
    while len(out) < n:
        scene = sample_scene(rng)
        if is_held_out(scene.caption) == want:
            out.append(scene)
    return out


def write_scenes(path: str | Path, scenes: list[Scene]) -> None:
    Path(path).write_text("".join(s.to_json() + "\n" for s in scenes))


def read_scenes(path: str | Path) -> list[Scene]:
    return [Scene.from_json(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------
# Rendering: signed distances on a pixel grid, coverage = clamp(0.5 - d, 0, 1) (one-pixel anti-aliasing)

_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
SQUARE_HALF = 0.85  # half side of a square, in radii (area ~ 2.9 r^2, close to the circle's 3.1 r^2)
TRIANGLE_R = 1.25  # circumradius of the equilateral triangle (apex up), in radii


def _signed_distance(px, py, cx, cy, r, shape):
    dx, dy = px - cx, py - cy
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - SQUARE_HALF * r
    R = TRIANGLE_R * r  # edges' outward normals at 90, 210, 330 degrees (y down: the apex points up)
    c30 = math.cos(math.pi / 6)
    triangle = torch.maximum(torch.maximum(dy, -c30 * dx - 0.5 * dy), c30 * dx - 0.5 * dy) - 0.5 * R
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(scenes: list[Scene], size: int = CANVAS, device: str | torch.device = "cpu") -> torch.Tensor:
    """Scenes -> images (B, 3, size, size) float32 in [0, 1]; the layout is defined on a 64 canvas."""
    B, K = len(scenes), 3
    s = size / CANVAS
    params = torch.zeros(B, K, 8)  # present, cx, cy, r, shape, r, g, b
    bg = torch.zeros(B, 3)
    for i, scene in enumerate(scenes):
        a, b, split = scene.background
        bg[i] = torch.tensor([a, b, {"none": 0, "horizontal": 1, "vertical": 2}[split]])
        for k, o in enumerate(scene.objects):
            params[i, k] = torch.tensor([1, o.x * s, o.y * s, o.radius * s, _SHAPE_ID[o.shape], *COLORS[o.color]])
    params, bg = params.to(device), bg.to(device)
    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    py, px = coords.view(1, size, 1), coords.view(1, 1, size)
    split = bg[:, 2].view(B, 1, 1)
    top_or_left = torch.where(split == 1, py.expand(B, size, size) < size / 2, px.expand(B, size, size) < size / 2)
    grey = torch.where((split > 0) & ~top_or_left, bg[:, 1].view(B, 1, 1), bg[:, 0].view(B, 1, 1))
    image = grey.unsqueeze(1).expand(B, 3, size, size).clone()
    for k in range(K):
        p = params[:, k].view(B, 8, 1, 1)
        d = _signed_distance(px, py, p[:, 1], p[:, 2], p[:, 3], p[:, 4])
        alpha = ((0.5 - d).clamp(0, 1) * p[:, 0]).unsqueeze(1)  # (B, 1, H, W)
        image = image * (1 - alpha) + p[:, 5:8] * alpha
    return image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
