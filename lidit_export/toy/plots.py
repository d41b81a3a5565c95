"""Small PNG figures with PIL alone (no plotting library): loss curves and prompt/sample grids."""
from __future__ import annotations

import io
import math

import numpy as np

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def loss_curves(series: dict[str, list[tuple[float, float]]], title: str, size=(720, 420), log_y: bool = True) -> bytes:
    """series: name -> [(step, value)]; one line each, legend top right. Returns PNG bytes."""
    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    points = [(x, y) for s in series.values() for x, y in s if y > 0 or not log_y]
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs, ys = [p[0] for p in points], [f(p[1]) for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    y1 += 1e-9
    sx = lambda x: left + (x - x0) / max(x1 - x0, 1e-9) * (W - left - right)  # noqa: E731
    sy = lambda y: top + (y1 - f(y)) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        y = top + (y1 - v) / (y1 - y0) * (H - top - bottom)
        d.line([left - 4, y, left, y], fill="black")
        d.text((4, y - 6), f"{10 ** v if log_y else v:.3g}", fill="black")
        x = x0 + (x1 - x0) * k / 4
        d.text((sx(x) - 10, H - bottom + 6), f"{x:.0f}", fill="black")
    d.text((left, 8), title, fill="black")
    for i, (name, s) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        line = [(sx(x), sy(y)) for x, y in s if y > 0 or not log_y]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        d.text((W - right - 160, top + 6 + 14 * i), name, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def prompt_grid(rows: list[tuple[str, list[np.ndarray]]], scale: int = 2, text_width: int = 300) -> bytes:
    """rows: (caption, [images (h, w, 3) uint8]); caption wrapped on the left, images to its right."""
    import textwrap

    from PIL import Image, ImageDraw

    h, w = rows[0][1][0].shape[:2]
    cell_h, cell_w, n = h * scale, w * scale, max(len(images) for _, images in rows)
    img = Image.new("RGB", (text_width + n * (cell_w + 4), len(rows) * (cell_h + 4)), "white")
    d = ImageDraw.Draw(img)
    for r, (caption, images) in enumerate(rows):
        y = r * (cell_h + 4)
        for k, line in enumerate(textwrap.wrap(caption, 46)[:cell_h // 12]):
            d.text((4, y + 4 + 12 * k), line, fill="black")
        for c, im in enumerate(images):
            tile = Image.fromarray(im).resize((cell_w, cell_h), Image.NEAREST)
            img.paste(tile, (text_width + c * (cell_w + 4), y))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def stacked_bars(rows: dict[str, dict[str, float]], title: str, unit: str, size=(760, 60)) -> bytes:
    """rows: name -> {part: value} drawn as one horizontal bar per row, its parts stacked left to right with a
    legend; the height grows with the rows. Returns PNG bytes."""
    from PIL import Image, ImageDraw

    parts = list(next(iter(rows.values())))
    W, label, right, bar, gap, top = size[0], 230, 80, 22, 10, 30
    H = top + len(rows) * (bar + gap) + 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black")
    longest = max(sum(r.values()) for r in rows.values())
    scale = (W - label - right) / longest
    for i, (name, values) in enumerate(rows.items()):
        y, x = top + i * (bar + gap), label
        d.text((8, y + 5), name, fill="black")
        for k, part in enumerate(parts):
            w = values[part] * scale
            d.rectangle([x, y, x + w, y + bar], fill=_COLOURS[k % len(_COLOURS)])
            x += w
        d.text((x + 6, y + 5), f"{sum(values.values()):.0f} {unit}", fill="black")
    for k, part in enumerate(parts):
        x = label + k * 110
        d.rectangle([x, H - 26, x + 12, H - 14], fill=_COLOURS[k % len(_COLOURS)])
        d.text((x + 16, H - 27), part, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
