"""Write a small folder of images and masks to try `cascade-clip` on your own data (README, "Train on your own data").

    python examples/shapes/make_images.py data/shapes

Each image shows one to three shapes (circle, square, triangle, ring) on a noisy background; its mask is an 8-bit PNG
of the same size: 0 = background, k = the class on line k of shapes.txt. Layout:

    data/shapes/images/{train,val}/0000.jpg ...
    data/shapes/masks/{train,val}/0000.png ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "ring")  # mask value = position + 1, as in shapes.txt
SIZE = 96


def draw_shape(canvases: list[ImageDraw.ImageDraw], shape: str, box: tuple[int, int, int, int], fills: list) -> None:
    """Draw `shape` in `box` on each canvas (the image, then the mask) with that canvas's fill."""
    left, top, right, bottom = box
    for canvas, fill in zip(canvases, fills, strict=True):
        if shape == "circle":
            canvas.ellipse(box, fill=fill)
        elif shape == "square":
            canvas.rectangle(box, fill=fill)
        elif shape == "triangle":
            canvas.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)
        else:  # a ring: a thick circle outline
            canvas.ellipse(box, outline=fill, width=max(3, (right - left) // 5))


def scene(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    background = rng.integers(60, 200, 3)
    pixels = np.clip(background + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image, mask = Image.fromarray(pixels), Image.new("L", (SIZE, SIZE), 0)
    canvases = [ImageDraw.Draw(image), ImageDraw.Draw(mask)]
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(len(SHAPES)))
        side = int(rng.integers(24, 44))
        left, top = (int(v) for v in rng.integers(0, SIZE - side, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw_shape(canvases, SHAPES[kind], (left, top, left + side, top + side), [colour, kind + 1])
    return image, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write images/ and masks/ into")
    parser.add_argument("--train", type=int, default=24, help="training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=6, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("val", args.val)):
        for folder in ("images", "masks"):
            (args.out / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = scene(rng)
            image.save(args.out / "images" / split / f"{i:04d}.jpg", quality=95)
            mask.save(args.out / "masks" / split / f"{i:04d}.png")
    print(f"wrote {args.train} training and {args.val} validation images with masks under {args.out}")


if __name__ == "__main__":
    main()
