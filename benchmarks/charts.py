"""Line charts of Dice against a quantity (seconds, labelled images), one panel per task, drawn with Pillow."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` points."""
    return ImageFont.load_default(size=size)


def nice_ticks(high: float, most: int = 6) -> list[float]:
    """Round ticks 0, step, 2 step, ... (step 1, 2 or 5 times a power of ten) up to at least ``high``."""
    for exponent in range(-3, 7):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            if high <= step * (most - 1):
                return [round(step * i, 6) for i in range(math.ceil(high / step - 1e-9) + 1)]
    return [0.0, high]


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    xticks: Sequence[float],
    xscale: Callable[[float], float],
    colours: Mapping[str, str],
) -> None:
    """One line chart (Dice 0..1 on y) inside ``box`` = (left, top, right, bottom), its legend on the right."""
    left, top, right, bottom = box
    x0, y0, x1, y1 = left + 60, top + 34, right - 110, bottom - 48
    lo, hi = xscale(xticks[0]), xscale(xticks[-1])
    px = lambda x: x0 + (xscale(x) - lo) / ((hi - lo) or 1.0) * (x1 - x0)  # noqa: E731
    py = lambda y: y1 - y * (y1 - y0)  # noqa: E731
    draw.text(((x0 + x1) / 2, top + 10), title, fill="black", font=_font(15), anchor="mt")
    for k in range(6):
        draw.line([x0, py(k / 5), x1, py(k / 5)], fill="#dddddd")
        draw.text((x0 - 6, py(k / 5)), f"{k / 5:.1f}", fill="black", font=_font(12), anchor="rm")
    for x in xticks:
        draw.line([px(x), y1, px(x), y1 + 4], fill="black")
        draw.text((px(x), y1 + 7), f"{x:g}", fill="black", font=_font(12), anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2, bottom - 20), xlabel, fill="black", font=_font(13), anchor="mt")
    draw.text((left + 16, (y0 + y1) / 2), "Dice", fill="black", font=_font(13), anchor="mm")
    for k, (name, points) in enumerate(series.items()):
        colour = colours.get(name, "black")
        xy = [(px(x), py(y)) for x, y in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([x1 + 12, y0 + 8 + 18 * k, x1 + 30, y0 + 8 + 18 * k], fill=colour, width=3)
        draw.text((x1 + 36, y0 + 8 + 18 * k), name, fill="black", font=_font(12), anchor="lm")


def draw_charts(
    path: Path,
    panels: dict[str, dict[str, list[tuple[float, float]]]],
    xlabel: str,
    colours: Mapping[str, str],
    log2: bool = False,
) -> None:
    """A PNG with one Dice line chart per panel, side by side (drawn with Pillow; x on a log2 axis if asked)."""
    width, height = 640, 400
    image = Image.new("RGB", (width * max(len(panels), 1), height), "white")
    draw = ImageDraw.Draw(image)
    for k, (title, series) in enumerate(panels.items()):
        xs = sorted({x for points in series.values() for x, _ in points}) or [1.0]
        xticks = xs if log2 else nice_ticks(max(xs))
        xscale = (lambda x: math.log2(max(x, 1e-9))) if log2 else float
        box = (k * width, 0, (k + 1) * width, height)
        _draw_panel(draw, box, title, series, xlabel, xticks, xscale, colours)
    image.save(path)
