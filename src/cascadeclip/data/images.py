"""Reading any image a user may hand over as 8-bit RGB: a path, a PIL image or a numpy array.

- EXIF orientation is applied, so the result is upright as image viewers show it (its size is the displayed size).
  A damaged EXIF block (the pixels themselves fine) is ignored with a warning: the image is used as stored.
- Grey, bilevel, palette, CMYK and 16-bit images are converted; 16-bit values are scaled (v / 257), not clipped.
- Transparent pixels (RGBA, LA, palette with transparency) are composited over white.
- Multi-frame files (GIF, TIFF) give their first frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..utils import UserError

# Suffixes taken as images when a folder is given (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def load_image(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An upright 8-bit RGB PIL image from a path, a PIL image or an (H, W), (H, W, 1/3/4) array.

    Raises UserError naming the file when it is missing or cannot be decoded, and saying what an array should
    look like when it cannot be read as an image; an image without pixels (0 wide or high) is refused too.
    """
    if isinstance(source, np.ndarray):
        return to_rgb(array_to_image(source))
    if isinstance(source, Image.Image):
        return _check_not_empty(to_rgb(upright(source, "the image")), "the image")
    if not isinstance(source, (str, Path)):
        raise UserError(f"expected an image path, a PIL image or a numpy array, got {type(source).__name__}")
    path = Path(source).expanduser()
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not later
            return _check_not_empty(to_rgb(upright(image, str(path))), f"image {path}")
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not an image") from None
    except Image.DecompressionBombError as err:
        raise UserError(f"image {path} is too large to segment safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"image {path} cannot be read as an image ({err}); is it a complete image file?") from None


def upright(image: Image.Image, name: str) -> Image.Image:
    """`image` turned as its EXIF orientation says; as stored, with a warning, when its EXIF block is damaged."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:  # Pillow raises many kinds on malformed EXIF; the pixels are decoded already
        warnings.warn(
            f"{name}: its EXIF metadata is damaged ({type(err).__name__}: {err}); used as stored, not rotated",
            stacklevel=3,
        )
        return image.copy()


def _check_not_empty(image: Image.Image, what: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise UserError(f"{what} has no pixels ({image.width}x{image.height})")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode: 16-bit scaled to 8 bits, transparency composited over white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return array_to_image(np.clip(np.asarray(image), 0, 65535).astype(np.uint16)).convert("RGB")
    if image.mode == "F":
        return array_to_image(np.asarray(image)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
    """A PIL image ("L", "RGB" or "RGBA") of an (H, W) or (H, W, 1/3/4) array.

    uint8 is taken as is; uint16 as 16-bit (v / 257); floats must lie in [0, 1]; bool is black and white; other
    integer types must hold 0..255.
    """
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        hint = (
            " (it looks channels-first: use array.transpose(1, 2, 0))"
            if array.ndim == 3 and array.shape[0] in (1, 3, 4)
            else ""
        )
        raise UserError(f"an image array must have shape (H, W) or (H, W, 1/3/4), got {array.shape}{hint}")
    if array.size == 0:
        raise UserError(f"the image array has no pixels (shape {array.shape})")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.round(array / 257.0).astype(np.uint8)
    elif array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        missing = int(np.isnan(array).sum())
        if missing:
            raise UserError(
                f"the float image array holds {missing} NaN value(s) (not a number); replace them (np.nan_to_num) "
                "or pass uint8"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise UserError(
                f"a float image array must hold values in [0, 1], got {low:g}..{high:g}; "
                "scale it (e.g. array / 255) or pass uint8"
            )
        pixels = np.round(array * 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise UserError(
                f"an integer image array of type {array.dtype} must hold 0..255; pass uint16 for 16-bit images"
            )
        pixels = array.astype(np.uint8)
    else:
        raise UserError(f"cannot read an image array of type {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(pixels))
