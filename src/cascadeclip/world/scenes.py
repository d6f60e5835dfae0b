"""Procedural scenes of the miniature world: coloured, patterned shapes on muted textured backgrounds, with exact
masks and captions. An object's class is its colour and its surface pattern; its shape is drawn at random and is
not part of the class.

A scene is fully determined by (seed, stream, index): the same numbers always give the same pixels. Objects are
painted in order, later ones occluding earlier ones; the label map records exactly which object owns each pixel
(0 = background, c + 1 = class c, the VOC convention before `reduce_zero_label`).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..config.class_names import WORLD_CLASSES, WORLD_COLOURS, WORLD_PATTERNS

# Hues (degrees) about 72 apart, so that the training pipeline's hue jitter (up to 36 degrees) rarely carries one
# colour into another's half of the gap.
COLOUR_HUES = {"red": 355.0, "yellow": 65.0, "green": 135.0, "blue": 210.0, "purple": 283.0}
assert tuple(COLOUR_HUES) == WORLD_COLOURS

# Part of every cache key (datasets, pretrained CLIPs): change it whenever the scenes drawn for a seed change.
WORLD_VERSION = 4

# The surface patterns, sized for the tiny CLIP's 8-pixel patches (docs/world.md, "Why the world looks as it does").
# Marks repeat every 3-4 pixels, so every patch holds two full periods of them: at 5-7 pixels a patch held about one,
# and a linear probe of the pretrained CLIP's tokens told the pattern apart in only 57% of tokens (colour: 100%).
PATTERN_PERIOD = (3.0, 4.0)  # pixels, drawn uniformly per object
DOT_RADIUS = 1 / 4  # of the period
# Marks are mixed this far from the object's colour toward their tint: far enough that striped, dotted and checkered
# differ in the pixels' brightness as well as in their layout (with a pale 55% mix the CLIP confused them).
MARK_MIX = 0.9
# Stripes are light, dots and checks dark: two patterns of the same colour then differ even in a patch's mean.
MARK_TINT = {"striped": 245.0, "dotted": 20.0, "checkered": 20.0}

# Random streams of one seed: separate, so that e.g. pretraining never draws a validation scene.
STREAMS = {"train": 0, "val": 1, "pretrain": 2, "zero_shot": 3}


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8: 0 background, c + 1 for class c
    classes: list[int]  # class of each painted object, in painting order
    caption: str


SHAPES = ("circle", "square", "triangle", "cross")


def class_words(c: int) -> tuple[str, str]:
    """Class index -> (colour, pattern)."""
    return WORLD_COLOURS[c // len(WORLD_PATTERNS)], WORLD_PATTERNS[c % len(WORLD_PATTERNS)]


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, STREAMS[stream], index))


# ----------------------------------------------------------------------------------------------------------------
# Backgrounds: muted (low-saturation) textures, so that they never look like an object's colour
# ----------------------------------------------------------------------------------------------------------------


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70, 190)
    return np.clip(grey + rng.uniform(-18, 18, size=3), 0, 255)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float texture: low-frequency blotches or a gradient, with fine noise. Never stripes, dots or
    checks, which are the objects' patterns."""
    a, b = _muted_colour(rng), _muted_colour(rng)
    if rng.integers(2):  # blotches
        coarse = rng.uniform(0, 1, size=(5, 5))
        mix = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    else:  # linear gradient
        yy, xx = np.mgrid[0:size, 0:size] / size
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        mix = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    texture = a * (1 - mix[..., None]) + b * mix[..., None]
    return texture + rng.normal(0, 6, size=texture.shape)


# ----------------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------------


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def shape_mask(shape: str, size: int, cx: float, cy: float, diameter: float, angle: float) -> np.ndarray:
    """(size, size) bool mask of one shape of the given diameter, centred at (cx, cy), rotated by `angle`."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    r = diameter / 2
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "square":
        h = r * 0.8  # a square of side 1.6 r looks as big as a circle of radius r
        draw.polygon(_rotated([(-h, -h), (h, -h), (h, h), (-h, h)], angle, cx, cy), fill=1)
    elif shape == "triangle":
        corners = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(_rotated(corners, angle, cx, cy), fill=1)
    elif shape == "cross":
        t = r / 3  # half the arm width
        arm = [
            (-t, -r),
            (t, -r),
            (t, -t),
            (r, -t),
            (r, t),
            (t, t),
            (t, r),
            (-t, r),
            (-t, t),
            (-r, t),
            (-r, -t),
            (-t, -t),
        ]
        draw.polygon(_rotated(arm, angle, cx, cy), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.array(canvas, dtype=bool)


def object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    """An RGB (0..255) shade of the named colour: its hue +-5 degrees, saturated, of varying brightness."""
    hue = (COLOUR_HUES[colour] + rng.uniform(-5, 5)) / 360 % 1.0
    return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 0.95), rng.uniform(0.75, 0.95)))


def pattern_mask(rng: np.random.Generator, pattern: str, size: int) -> np.ndarray:
    """(size, size) bool: where the pattern's marks go (stripes, dots or checks of a random period in
    `PATTERN_PERIOD`, phase and angle); nowhere for 'plain'."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle) + rng.uniform(0, 10)
    v = -xx * math.sin(angle) + yy * math.cos(angle) + rng.uniform(0, 10)
    period = rng.uniform(*PATTERN_PERIOD)
    if pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    if pattern == "striped":
        return (u % period) < period / 2
    if pattern == "dotted":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return du**2 + dv**2 < (period * DOT_RADIUS) ** 2
    if pattern == "checkered":
        return ((u // (period / 2)) + (v // (period / 2))) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def paint_object(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, colour: str, pattern: str) -> None:
    """Fill `mask` in `image` (float, in place): the colour, shaded, with the pattern's marks mixed `MARK_MIX` of the
    way toward the pattern's tint."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * math.pi)
    shading = 1 + 0.15 * (xx * math.cos(angle) + yy * math.sin(angle) - 0.5)
    base = object_colour(rng, colour)
    marks = (1 - MARK_MIX) * base + MARK_MIX * MARK_TINT.get(pattern, 0.0)
    fill = np.where(pattern_mask(rng, pattern, size)[..., None], marks, base)
    fill = fill * shading[..., None] + rng.normal(0, 4, size=image.shape)
    image[mask] = fill[mask]


# ----------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------

CAPTION_TEMPLATES = ("a photo of {}", "{} in the scene", "there is {}", "a picture of {}")


def caption_for(rng: np.random.Generator, classes: list[int]) -> str:
    """Name every object in words, e.g. 'a photo of a red striped and a blue dotted'; single objects use CLIP's
    'a photo of a {}' most of the time, the template the class queries use."""
    names = [f"a {WORLD_CLASSES[c]}" for c in classes]
    order = rng.permutation(len(names))
    listed = [names[i] for i in order]
    phrase = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    template = CAPTION_TEMPLATES[0] if rng.uniform() < 0.5 else CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(phrase)


def render_scene(
    rng: np.random.Generator,
    size: int = 64,
    num_objects: int | tuple[int, int] = (2, 4),
    diameter: tuple[float, float] = (0.28, 0.45),
    classes: list[int] | None = None,
) -> Scene:
    """Paint a scene.

    Args:
        rng: the scene's random generator (see `scene_rng`).
        size: image side in pixels.
        num_objects: a count, or an inclusive (min, max) range to draw it from.
        diameter: range of object diameters as a fraction of `size`.
        classes: the objects' classes; drawn uniformly when None.
    Returns:
        A Scene; objects that would end up mostly hidden are re-placed, so each keeps at least 60% of its area.
    """
    if classes is None:
        count = num_objects if isinstance(num_objects, int) else int(rng.integers(num_objects[0], num_objects[1] + 1))
        classes = [int(c) for c in rng.integers(len(WORLD_CLASSES), size=count)]
    image = background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    owners = np.full((size, size), -1)
    areas: list[int] = []
    painted: list[int] = []
    for c in classes:
        colour, pattern = class_words(c)
        shape = SHAPES[rng.integers(len(SHAPES))]
        for _ in range(20):
            d = rng.uniform(*diameter) * size
            cx, cy = rng.uniform(d * 0.4, size - d * 0.4, size=2)
            mask = shape_mask(shape, size, cx, cy, d, rng.uniform(0, 2 * math.pi))
            if all(np.count_nonzero((owners == k) & ~mask) >= 0.6 * areas[k] for k in range(len(painted))):
                break
        else:
            continue  # no room left for this object
        paint_object(rng, image, mask, colour, pattern)
        label[mask] = c + 1
        owners[mask] = len(painted)
        areas.append(int(mask.sum()))
        painted.append(c)
    return Scene(np.clip(image, 0, 255).round().astype(np.uint8), label, painted, caption_for(rng, painted))


def single_object(rng: np.random.Generator, c: int, size: int = 64) -> Scene:
    """One large object of class c, centred-ish: the world's 'ImageNet photo' for zero-shot classification."""
    return render_scene(rng, size, classes=[c], diameter=(0.5, 0.7))


def texture(rng: np.random.Generator, c: int, size: int = 64) -> Scene:
    """The whole image painted as one object of class c, no edge and no background: a picture of the class's surface
    alone, captioned with its name (pretraining shows these, so that every patch of it learns the class)."""
    image = background(rng, size)
    colour, pattern = class_words(c)
    paint_object(rng, image, np.ones((size, size), dtype=bool), colour, pattern)
    label = np.full((size, size), c + 1, dtype=np.uint8)
    return Scene(np.clip(image, 0, 255).round().astype(np.uint8), label, [c], caption_for(rng, [c]))
