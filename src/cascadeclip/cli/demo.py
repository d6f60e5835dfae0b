"""`cascade-clip demo`: the built-in default job.

Until a trained model ships with the project, this runs the full-size model with random weights on the bundled
sample image (sliding windows, class queries from the text tower) and writes the picture of its prediction. The
weights are random, so the prediction is meaningless; the run shows that every part of the path works.
"""

from __future__ import annotations

import argparse
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import TextEncoderConfig
from ..factory import create_model
from ..inference import predict_scores, seen_shift_vector
from ..presets import get_preset
from ..text_embeddings import class_embeddings
from ..transforms import test_image_tensor
from ..visualize import overlay, palette, present_legend, side_by_side

HELP = "run the model on the bundled sample image and write a picture of the prediction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    preset = get_preset("voc-inductive")
    cfg = preset.model
    cfg.text_encoder = TextEncoderConfig()
    print("building Cascade-CLIP ViT-B/16 with RANDOM weights: the prediction below is meaningless")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, _ = create_model(cfg)
    model.eval()
    image = Image.open(files("cascadeclip") / "assets" / "sample.jpg").convert("RGB")
    names = preset.classes.names
    text = class_embeddings(names, preset.classes.templates, text_encoder=model.text_encoder)
    shift = seen_shift_vector(len(names), preset.classes.seen, preset.classes.test_seen_shift)
    scores = predict_scores(model, test_image_tensor(image, preset.test.short_side), text, shift,
                            out_size=(image.height, image.width))  # fmt: skip
    labels = scores[0].argmax(0).numpy().astype(np.int64)
    colors = palette(len(names))
    picture = side_by_side(
        [image, overlay(image, labels, colors), present_legend(labels, list(names), colors, image.height)],
        ["image", "prediction (RANDOM weights)", "classes"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sample_prediction.png"
    picture.save(path)
    print(f"wrote {path} ({picture.width}x{picture.height}); weights were random, so the classes shown are noise")
    return 0
