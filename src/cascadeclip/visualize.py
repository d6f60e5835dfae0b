"""Pictures people can read: distinct class colours, overlays, legends with class names, side-by-side panels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .utils import IGNORE_INDEX

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


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) int labels -> (H, W, 3) uint8; ignored and out-of-range labels are black."""
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < len(colors))
    out[valid] = colors[labels[valid]]
    return out


def overlay(
    image: Image.Image, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.55, ignore_index: int = IGNORE_INDEX
) -> Image.Image:
    """Blend the colour-coded labels over the RGB image (same size); ignored pixels keep the image."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    coloured = colorize(labels, colors, ignore_index).astype(np.float32)
    valid = (labels != ignore_index)[..., None]
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
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
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


def present_legend(
    labels: np.ndarray, names: list[str], colors: np.ndarray, height: int, ignore_index: int = IGNORE_INDEX
) -> Image.Image:
    """Legend of only the classes that occur in `labels`, by decreasing pixel share."""
    ids, counts = np.unique(labels[(labels != ignore_index) & (labels < len(names))], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    return legend([names[i] for i in order], colors[order], height)


# ----------------------------------------------------------------------------------------------------------------
# Segmentation overlays with a legend strip (`cascade-clip segment`)
# ----------------------------------------------------------------------------------------------------------------

BACKGROUND_LABEL = IGNORE_INDEX  # pixels no class claims are left untinted, as ignored pixels are


@dataclass
class LegendEntry:
    """One legend line: a swatch (None = the untinted, hatched background swatch) and its text."""

    text: str
    color: tuple[int, int, int] | None


def region_borders(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool, True on pixels next to a different label (right or below), widened to `thickness` pixels."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    for _ in range(thickness - 1):
        grown = edges.copy()
        grown[1:] |= edges[:-1]
        grown[:, 1:] |= edges[:, :-1]
        edges = grown
    return edges


def label_anchors(
    labels: np.ndarray, classes: list[int], max_side: int = 160, min_depth: int = 3
) -> dict[int, tuple[int, int]]:
    """(x, y) per class deep inside its largest blob, where its name can be written; classes whose regions are too
    thin or small (less than `min_depth` erosions on a map of at most `max_side` pixels) get none.

    The point is the last survivor of repeated 4-neighbour erosion on a subsampled map: cheap, and far from edges.
    """
    step = max(1, -(-max(labels.shape) // max_side))
    small = labels[step // 2 :: step, step // 2 :: step]
    if min(small.shape) == 0:  # a strip thinner than the subsampling step: no region is deep enough for a name
        return {}
    anchors = {}
    for c in classes:
        mask, depth = small == c, 0
        while True:
            eroded = mask.copy()
            eroded[1:] &= mask[:-1]
            eroded[:-1] &= mask[1:]
            eroded[:, 1:] &= mask[:, :-1]
            eroded[:, :-1] &= mask[:, 1:]
            eroded[[0, -1], :] = False
            eroded[:, [0, -1]] = False
            if not eroded.any():
                break
            mask, depth = eroded, depth + 1
        if depth >= min_depth:
            ys, xs = np.nonzero(mask)
            k = len(ys) // 2
            anchors[c] = (int(xs[k]) * step + step // 2, int(ys[k]) * step + step // 2)
    return anchors


def draw_region_names(
    picture: Image.Image, anchors: dict[int, tuple[int, int]], names: list[str], font_size: int
) -> None:
    """Write each class name in a white box centred on its anchor, inside the picture; in the order given, and a
    name whose box would cover one already written is left out (the legend still lists it)."""
    draw, font = ImageDraw.Draw(picture), _font(font_size)
    pad = max(2, font_size // 5)
    drawn: list[tuple[int, int, int, int]] = []
    for c, (x, y) in anchors.items():
        left, top, right, bottom = draw.textbbox((0, 0), names[c], font=font)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x0 = min(max(0, x - w // 2), picture.width - w)
        y0 = min(max(0, y - h // 2), picture.height - h)
        box = (x0, y0, x0 + w, y0 + h)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in drawn):
            continue
        drawn.append(box)
        draw.rectangle(box, fill="white", outline="black")
        draw.text((x0 + pad - left, y0 + pad - top), names[c], fill="black", font=font)


def legend_entries(
    labels: np.ndarray, names: list[str], colors: np.ndarray, background: str | None = None, most_absent: int = 12
) -> tuple[list[LegendEntry], str]:
    """Legend lines for a label map: the classes found, largest share first, then the background line if asked.

    Returns the entries and one line naming the classes given but not found (at most `most_absent` of them by
    name, then a count), empty when every class was found.
    """
    total = max(labels.size, 1)
    counts = np.bincount(labels.ravel(), minlength=256)
    found = sorted((i for i in range(len(names)) if counts[i]), key=lambda i: -counts[i])
    entries = [
        LegendEntry(f"{names[i]}  {_percent(counts[i] / total)}", tuple(int(c) for c in colors[i])) for i in found
    ]
    if background is not None:
        entries.append(LegendEntry(f"{background}  {_percent(counts[BACKGROUND_LABEL] / total)}", None))
    absent = [names[i] for i in range(len(names)) if not counts[i]]
    shown = ", ".join(absent[:most_absent]) + (
        f" and {len(absent) - most_absent} more" if len(absent) > most_absent else ""
    )
    return entries, f"not found: {shown}" if absent else ""


def _percent(share: float) -> str:
    return "<0.1%" if 0 < share < 0.001 else f"{100 * share:.1f}%"


def legend_strip(entries: list[LegendEntry], note: str, width: int, font_size: int) -> Image.Image:
    """A white strip `width` wide: entries flowing left to right in rows, then `note` in grey, word-wrapped."""
    font = _font(font_size)
    margin, gap, row = font_size // 2 + 4, font_size + 6, int(font_size * 1.6)
    swatch = font_size
    placed, x, line = [], margin, 0
    for entry in entries:
        entry_width = swatch + font_size // 2 + int(font.getlength(entry.text))
        if x > margin and x + entry_width > width - margin:
            x, line = margin, line + 1
        placed.append((x, margin + line * row, entry))
        x += entry_width + gap
    entry_lines = line + 1 if entries else 0
    note_lines = _wrap(note, font, width - 2 * margin) if note else []
    height = 2 * margin + max(entry_lines + len(note_lines), 1) * row - (row - font_size)
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    for x, y, entry in placed:
        box = (x, y + 1, x + swatch, y + swatch + 1)
        draw.rectangle(box, fill=entry.color or "white", outline="black")
        if entry.color is None:  # background stays untinted: a crossed-out white swatch
            draw.line(box, fill=(120, 120, 120), width=max(1, swatch // 10))
            draw.line((box[0], box[3], box[2], box[1]), fill=(120, 120, 120), width=max(1, swatch // 10))
        draw.text((x + swatch + font_size // 2, y), entry.text, fill="black", font=font)
    for k, text in enumerate(note_lines):
        draw.text((margin, margin + (entry_lines + k) * row), text, fill=(100, 100, 100), font=font)
    return panel


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line]


def segmentation_overlay(
    image: Image.Image,
    labels: np.ndarray,
    names: list[str],
    colors: np.ndarray,
    background: str | None = None,
    alpha: float = 0.5,
    caption: str = "",
) -> tuple[Image.Image, list[str]]:
    """The picture people look at: the image at its own resolution with the classes tinted, their borders drawn
    and their names written inside their larger regions, above a legend strip; background (255) stays untinted.

    Args:
        image: the RGB image, same size as `labels`.
        labels: (H, W) uint8 class indices into `names`, 255 = background.
        background: legend text of the background line (e.g. "background (no class >= 0.50)"), None for none.
        caption: a grey line under the legend entries (e.g. a warning), before the classes not found.
    Returns:
        (picture, legend lines as text). The picture is at least 360 pixels wide so the legend stays legible; the
        top-left (W, H) region is the overlay.
    """
    height, width = labels.shape
    tinted = np.asarray(overlay(image, labels, colors, alpha)).copy()
    tinted[region_borders(labels, thickness=max(1, round(min(height, width) / 400)))] = 255
    tinted = Image.fromarray(tinted)
    canvas_width = max(width, 360)
    font_size = max(14, round(canvas_width / 60))
    counts = np.bincount(labels.ravel(), minlength=256)
    present = sorted((c for c in range(len(names)) if counts[c]), key=lambda c: -counts[c])  # larger regions first
    draw_region_names(tinted, label_anchors(labels, present), names, font_size)
    entries, note = legend_entries(labels, names, colors, background)
    note = " ".join(part for part in (caption, note) if part)
    strip = legend_strip(entries, note, canvas_width, font_size)
    picture = Image.new("RGB", (canvas_width, height + strip.height), "white")
    picture.paste(tinted, (0, 0))
    picture.paste(strip, (0, height))
    return picture, [e.text for e in entries] + ([note] if note else [])
