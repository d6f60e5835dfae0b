"""Reading the images users have: EXIF-rotated photos, grey, RGBA, palette and 16-bit files, numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cascadeclip.data.images import load_image
from cascadeclip.utils import UserError

RED, WHITE = (255, 0, 0), (255, 255, 255)


def exif_rotated_jpeg(path):
    """A 40x20 (W x H) JPEG, red in its stored top-left corner, tagged Orientation 6 (show rotated 90° clockwise)."""
    pixels = np.full((20, 40, 3), 255, dtype=np.uint8)
    pixels[:10, :10] = RED
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, quality=95, exif=exif)


def odd_images(folder) -> dict[str, tuple[int, int]]:
    """One file per awkward kind; returns name -> the (width, height) it must be read at."""
    exif_rotated_jpeg(folder / "rotated.jpg")
    Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (30, 1))).save(folder / "grey.png")
    rgba = np.zeros((30, 50, 4), dtype=np.uint8)
    rgba[:, 25:] = (255, 0, 0, 255)  # left half transparent (and black underneath)
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.full((24, 24, 3), (0, 0, 255), dtype=np.uint8)).convert("P").save(folder / "palette.gif")
    Image.fromarray(np.array([[0, 32896, 65535]] * 8, dtype=np.uint16)).save(folder / "sixteen.png")
    return {
        "rotated.jpg": (20, 40),
        "grey.png": (64, 30),
        "rgba.png": (50, 30),
        "palette.gif": (24, 24),
        "sixteen.png": (3, 8),
    }


def test_exif_orientation_is_applied(tmp_path):
    exif_rotated_jpeg(tmp_path / "rotated.jpg")
    image = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert image.shape == (40, 20, 3)  # upright: portrait
    # Rotating 90° clockwise takes the stored top-left corner to the top-right. JPEG blurs colour edges, so the
    # corners' centres are compared, within 40 levels.
    assert np.abs(image[5, 15].astype(int) - RED).max() < 40 and np.abs(image[5, 5].astype(int) - WHITE).max() < 40


def test_modes_become_8_bit_rgb(tmp_path):
    sizes = odd_images(tmp_path)
    for name, size in sizes.items():
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == size, name
    grey = np.asarray(load_image(tmp_path / "grey.png"))
    assert np.array_equal(grey[..., 0], grey[..., 2]) and grey[0, 1, 0] == 4
    rgba = np.asarray(load_image(tmp_path / "rgba.png"))
    assert tuple(rgba[0, 0]) == WHITE and tuple(rgba[0, -1]) == RED  # transparency over white, not black
    assert tuple(np.asarray(load_image(tmp_path / "palette.gif"))[0, 0]) == (0, 0, 255)
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "sixteen.png"))[0, :, 0].tolist() == [0, 128, 255]  # v / 257, not clipped


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0])
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "t.png", transparency=0)
    pixels = np.asarray(load_image(tmp_path / "t.png"))
    assert tuple(pixels[0, 0]) == WHITE and tuple(pixels[1, 1]) == (0, 255, 0)


def test_arrays():
    assert load_image(np.zeros((5, 6), dtype=np.uint8)).size == (6, 5)
    assert np.asarray(load_image(np.full((2, 2, 1), 0.5)))[0, 0].tolist() == [128] * 3
    assert np.asarray(load_image(np.full((2, 2, 3), 65535, dtype=np.uint16)))[0, 0].tolist() == [255] * 3
    assert np.asarray(load_image(np.eye(2, dtype=bool)))[0, 0].tolist() == [255] * 3
    assert load_image(Image.new("LA", (3, 3))).mode == "RGB"
    with pytest.raises(UserError, match="channels-first"):
        load_image(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 200.0))
    with pytest.raises(UserError, match="holds 1 NaN value"):
        load_image(np.array([[0.5, np.nan], [0.2, 0.1]]))
    with pytest.raises(UserError, match="0..255"):
        load_image(np.full((2, 2), 300, dtype=np.int32))


def test_segment_reads_every_kind_at_its_displayed_size(tmp_path, monkeypatch):
    """The CLI on a folder of awkward files: each label map has the size the image is shown at."""
    import torch

    from cascadeclip.cli.main import main
    from cascadeclip.factory import save_model
    from cascadeclip.modeling.cascade_clip import CascadeCLIP

    from conftest import tiny_model_config

    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_model(tmp_path / "tiny.safetensors", CascadeCLIP(tiny_model_config(with_text=True)))
    (tmp_path / "in").mkdir()
    sizes = odd_images(tmp_path / "in")
    args = [
        "segment",
        str(tmp_path / "in"),
        "--classes",
        "sky, tree",
        "--checkpoint",
        str(tmp_path / "tiny.safetensors"),
    ]
    assert main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    for name, size in sizes.items():
        assert Image.open(tmp_path / "out" / f"{name.rsplit('.', 1)[0]}_labels.png").size == size
