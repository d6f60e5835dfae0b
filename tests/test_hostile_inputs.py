"""Awkward inputs: broken EXIF, empty images, a class file with a byte-order mark, globs over mixed files, a corrupt
training image read by a worker process, pipes, odd names and shapes."""

from __future__ import annotations

import io
import json
import os
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cascadeclip import Segmenter
from cascadeclip.data.images import load_image
from cascadeclip.utils import UserError

from hostile import cli, refused, write_image


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))


def jpeg_with_broken_exif(path) -> None:
    """A fine 30x20 JPEG whose EXIF block holds an orientation tag and a YPosition stored as 'undefined' bytes, which
    Pillow cannot write back when it applies the orientation (a TypeError from inside Pillow)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">HHI", 0x011F, 7, 4) + b"\x89\x26\x42\x62"
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 2) + entries + b"\x00\x00\x00\x00"
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])


def test_a_jpeg_with_a_broken_exif_block_is_segmented_with_a_warning(tiny_checkpoint, tmp_path, capsys):
    jpeg_with_broken_exif(tmp_path / "photo.jpg")
    with pytest.warns(UserWarning, match="EXIF metadata is damaged"):
        assert load_image(tmp_path / "photo.jpg").size == (30, 20)  # as stored
    with Image.open(tmp_path / "photo.jpg") as opened, pytest.warns(UserWarning, match="EXIF"):
        segments = Segmenter.from_pretrained(tiny_checkpoint, device="cpu")(opened, candidate_labels=["a", "b"])
    assert segments[0]["mask"].size == (30, 20)
    argv = ["segment", tmp_path / "photo.jpg", "--classes", "a, b", "--checkpoint", tiny_checkpoint]
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0 and "warning:" in err and "EXIF metadata is damaged" in err
    assert (tmp_path / "out" / "photo_labels.png").is_file()


def test_empty_images_are_refused():
    for empty in (np.zeros((0, 0, 3), dtype=np.uint8), np.zeros((0, 5)), Image.new("RGB", (0, 0))):
        with pytest.raises(UserError, match="no pixels"):
            load_image(empty)


def test_a_class_file_with_a_byte_order_mark(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "names.txt").write_bytes("\ufeffcat\r\ndog\r\n".encode())
    image = write_image(tmp_path / "x.png")
    argv = ["segment", image, "--classes-file", tmp_path / "names.txt", "--checkpoint", tiny_checkpoint]
    assert cli(capsys, *argv, "--out", tmp_path / "o", "--device", "cpu")[0] == 0
    assert json.loads((tmp_path / "o" / "x.json").read_text())["settings"]["classes"] == ["cat", "dog"]
    refused(capsys, "segment", image, "--classes-file", tmp_path, "--checkpoint", tiny_checkpoint, match="is a folder")


def test_a_glob_takes_only_image_files_and_says_how_many_it_left_out(tiny_checkpoint, tmp_path, capsys):
    write_image(tmp_path / "d" / "a.png")
    write_image(tmp_path / "d" / "b.JPG")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / "labels.csv").write_text("1,2")
    argv = ["segment", f"{tmp_path / 'd'}/*", "--classes", "a, b", "--checkpoint", tiny_checkpoint]
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0 and "segmented 2 image(s)" in out and "left out 2 file(s) without an image suffix" in err


def test_a_corrupt_training_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    from cascadeclip.config import save_yaml

    from test_train import tiny_config

    cfg = tiny_config(tmp_path, iters=2)
    cfg.data.num_workers = 1
    broken = next((tmp_path / "data" / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    broken.write_bytes(broken.read_bytes()[:200])
    save_yaml(cfg, tmp_path / "tiny.yaml")
    line = refused(capsys, "train", tmp_path / "tiny.yaml", "--run-dir", tmp_path / "run", match=broken.name)
    assert "cannot be read" in line and "check-data" in line and "worker" not in line


def test_pipes_folders_and_odd_class_names(tiny_checkpoint, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    good = ["--checkpoint", tiny_checkpoint, "--out", tmp_path / "o"]
    refused(capsys, "segment", tmp_path / "pipe.png", "--classes", "a", *good, match="is not a regular file")
    image = write_image(tmp_path / "x.png")
    refused(capsys, "segment", image, "--classes", "x" * 10000, *good, match="10000 characters long")
    refused(capsys, "segment", image, "--classes", "cat, d\x07og", *good, match="control character")
    assert not (tmp_path / "o").exists()


def test_a_strip_too_long_to_score_is_refused_and_a_single_pixel_works(tiny_checkpoint):
    segmenter = Segmenter.from_pretrained(tiny_checkpoint, device="cpu")
    with pytest.raises(UserError, match="too large to hold the scores"):
        segmenter.predict(np.zeros((2, 20000, 3), dtype=np.uint8), ["a", "b"])  # 64 x 640000 at inference
    assert segmenter.predict(np.zeros((1, 1, 3), dtype=np.uint8), ["a", "b"]).labels.shape == (1, 1)


def test_an_overlay_of_a_very_thin_strip():
    from cascadeclip.visualize import palette, segmentation_overlay

    labels = np.zeros((5, 2000), dtype=np.uint8)
    labels[:, 1000:] = 1
    picture, _ = segmentation_overlay(Image.new("RGB", (2000, 5)), labels, ["a", "b"], palette(2), None)
    assert picture.width == 2000 and picture.height > 5  # the strip above its legend


def test_a_short_side_too_large_for_any_image_is_refused_before_any_image_is_read(tmp_path, capsys):
    with pytest.raises(UserError, match="choose a short side of at most 4096"):
        random_segmenter(short_side=100_000)
    image = write_image(tmp_path / "x.png")
    argv = ["segment", image, "--classes", "cat, dog", "--random-weights", "--short-side", "100000"]
    refused(capsys, *argv, "--out", tmp_path / "out", match="at least 100000x100000 at inference")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# The Python API: values of the wrong kind are refused at the call, in our words
# ----------------------------------------------------------------------------------------------------------------


def random_segmenter(**keywords) -> Segmenter:
    from conftest import tiny_model_config

    with pytest.warns(UserWarning, match="RANDOM weights"):
        return Segmenter.with_random_weights(tiny_model_config(with_text=True), device="cpu", **keywords)


@pytest.fixture(scope="module")
def segmenter():
    return random_segmenter(mode="whole")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, image: s.predict(image, [None, "cat"]), "class name number 1 of 2 is a NoneType, not a string"),
        (lambda s, image: s.predict(image, {"cat", "dog"}), "a set has no order"),
        (lambda s, image: s.predict(image, ["cat", "dog"], background="0.5"), "got '0.5'"),
        (lambda s, image: s.predict(image, ["cat", "dog"], background=[0.5]), "got [0.5]"),
        (lambda s, image: s.predict(image, ["cat", "background"], background=0.5), "a class is named 'background'"),
        (lambda s, image: s.predict(image, ["cat", "dog"], scores_dtype=np.uint8), "must be a NumPy float type"),
        (lambda s, image: s.predict(image, ["cat", "dog"], scores_dtype="bogus"), "must be a NumPy float type"),
        (lambda s, image: s.predict(b"bytes", ["cat", "dog"]), "got bytes"),
        (lambda s, image: s.predict_many([], ["cat"], scores_dtype=int), "must be a NumPy float type"),
    ],
)
def test_api_values_of_the_wrong_kind_are_refused_at_the_call(segmenter, call, message):
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    with pytest.raises(UserError, match=re.escape(message)):
        call(segmenter, image)


def test_an_image_of_none_without_a_set_image_is_refused():
    with pytest.raises(UserError, match="no image to segment"):
        random_segmenter(mode="whole").predict(None, ["cat", "dog"])


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"crop": "64"}, "crop must be a whole number, got '64'"),
        ({"stride": 10.5}, "stride must be a whole number, got 10.5"),
        ({"short_side": True}, "short_side must be a whole number, got True"),
        ({"bf16": "no"}, "bf16 must be True or False, got 'no'"),
    ],
)
def test_segmenter_settings_of_the_wrong_type_are_refused(keywords, message):
    with pytest.raises(UserError, match=re.escape(message)):
        random_segmenter(**keywords)


@pytest.mark.parametrize(
    "item, message",
    [
        (np.zeros((40, 50, 3), dtype=np.uint8), "item 0 must be (key, tensor from preprocess, (H, W)), got ndarray"),
        (
            ("k", np.zeros((1, 3, 64, 64)), (40, 50)),
            "item 0's image must be a (1, 3, h, w) tensor (preprocess), got ndarray",
        ),
        (("k", torch.zeros(3, 64, 64), (40, 50)), "got (3, 64, 64)"),
        (("k", torch.zeros(1, 3, 64, 64), (0, 50)), "item 0's size must be (H, W) in pixels, got (0, 50)"),
    ],
)
def test_predict_many_refuses_an_item_that_is_not_key_tensor_and_size(segmenter, item, message):
    with pytest.raises(UserError, match=re.escape(message)):
        next(segmenter.predict_many([item], ["cat", "dog"]))
