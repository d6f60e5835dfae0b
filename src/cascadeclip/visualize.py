"""Pictures people can read: distinct class colours, overlays, legends with class names, side-by-side panels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOR = (0, 0, 0)


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, as far apart as possible: farthest-point picks from an RGB grid.

    Distances are weighted (2, 4, 3) per channel, a cheap approximation of perceived difference; near-black colours
    are left out because black marks ignored pixels. The first colours are the most distinct.
    """
    levels = np.linspace(0, 255, 8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[grid.sum(1) > 120]
    weights = np.sqrt([2.0, 4.0, 3.0])
    points = grid * weights
    chosen = [int(np.argmax(grid[:, 0] - grid[:, 1] - grid[:, 2]))]  # start from pure red
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(1, num_classes):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
    return grid[chosen[:num_classes]].round().astype(np.uint8)


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) int labels -> (H, W, 3) uint8; ignored and out-of-range labels are black."""
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < len(colors))
    out[valid] = colors[labels[valid]]
    return out


def overlay(image: Image.Image, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Blend the colour-coded labels over the RGB image (same size); ignored pixels keep the image."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    coloured = colorize(labels, colors).astype(np.float32)
    valid = (labels != 255)[..., None]
    blended = np.where(valid, (1 - alpha) * rgb + alpha * coloured, rgb)
    return Image.fromarray(blended.round().astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def legend(names: list[str], colors: np.ndarray, height: int, font_size: int = 14) -> Image.Image:
    """A white panel listing `names` with colour swatches, in as many columns as `height` requires."""
    font = _font(font_size)
    row = font_size + 8
    rows_per_column = max(1, (height - 8) // row)
    columns = -(-len(names) // rows_per_column) if names else 1
    text_width = max((font.getlength(n) for n in names), default=0)
    column_width = int(text_width) + font_size + 24
    panel = Image.new("RGB", (columns * column_width + 8, height), "white")
    draw = ImageDraw.Draw(panel)
    for i, (name, color) in enumerate(zip(names, colors)):
        x = 8 + (i // rows_per_column) * column_width
        y = 6 + (i % rows_per_column) * row
        draw.rectangle([x, y, x + font_size, y + font_size], fill=tuple(int(c) for c in color), outline="black")
        draw.text((x + font_size + 6, y - 1), name, fill="black", font=font)
    return panel


def side_by_side(panels: list[Image.Image], titles: list[str] | None = None, gap: int = 6) -> Image.Image:
    """Panels left to right on white, top-aligned, each with an optional title above it."""
    font_size = 16
    title_height = font_size + 10 if titles else 0
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels) + title_height
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, panel in enumerate(panels):
        canvas.paste(panel.convert("RGB"), (x, title_height))
        if titles and titles[i]:
            draw.text((x + 4, 4), titles[i], fill="black", font=_font(font_size))
        x += panel.width + gap
    return canvas


def present_legend(labels: np.ndarray, names: list[str], colors: np.ndarray, height: int) -> Image.Image:
    """Legend of only the classes that occur in `labels`, by decreasing pixel share."""
    ids, counts = np.unique(labels[(labels != 255) & (labels < len(names))], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    return legend([names[i] for i in order], colors[order], height)
