"""What a person reads after an evaluation: a per-class table, the headline numbers, pictures of predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..utils import ignore_index_for
from ..visualize import overlay, palette, present_legend, side_by_side


def number_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def results_table(results: dict[str, Any]) -> str:
    """Per-class IoU and accuracy (unseen classes marked), then mIoU(S), mIoU(U), hIoU, mIoU and aAcc."""
    rows = results["per_class"]
    width = max([len("class")] + [len(r["name"]) for r in rows])
    lines = [f"{'class':<{width}}  {'split':<6}  {'IoU':>6}  {'Acc':>6}"]
    lines += [
        f"{r['name']:<{width}}  {r['split']:<6}  {number_text(r['IoU']):>6}  {number_text(r['Acc']):>6}" for r in rows
    ]
    seen = sum(r["split"] == "seen" for r in rows)
    unseen = len(rows) - seen
    headline = [
        (f"mIoU(seen, {seen} classes)", results["mIoU_seen"]),
        (f"mIoU(unseen, {unseen} classes)", results["mIoU_unseen"]),
        ("hIoU", results["hIoU"]),
        ("mIoU(all classes)", results["mIoU"]),
        ("aAcc", results["aAcc"]),
    ]
    lines.append("")
    lines += [f"{title:<28}{number_text(value):>8}" for title, value in headline]
    lines.append(f"{'images':<28}{results['images']:>8}")
    if results.get("background"):
        lines.append(background_note(results["background"]))
    if results.get("skipped"):
        lines.append(
            f"WARNING: {len(results['skipped'])} images could not be used and are NOT in these numbers; "
            "they are listed under 'skipped' in --out"
        )
    return "\n".join(lines)


def background_note(rule: dict[str, Any]) -> str:
    """How the background class was predicted (`evaluate.background_rule`), in one line."""
    return (
        f"{rule['class']!r} is predicted where no other class reaches probability {rule['threshold']} "
        "(test.background_threshold: fixed, not tuned on these images)"
    )


def prediction_picture(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, names: tuple[str, ...], unseen: tuple[int, ...]
) -> Image.Image:
    """Image, ground truth and prediction side by side, with a legend of the classes in either (unseen marked),
    most frequent first.

    `label` and `prediction` are (H, W) class maps of the image's size; ignored ground-truth pixels (255, or 65535
    above 255 classes) show the image.
    """
    colors = palette(len(names))
    ignore = ignore_index_for(len(names))
    picture = Image.fromarray(image)
    marked = [f"{name} (unseen)" if i in unseen else name for i, name in enumerate(names)]
    both = np.concatenate([label.ravel(), prediction.ravel()])
    return side_by_side(
        [
            picture,
            overlay(picture, label, colors, ignore_index=ignore),
            overlay(picture, prediction, colors, ignore_index=ignore),
            present_legend(both, marked, colors, picture.height, ignore_index=ignore),
        ],
        ["image", "ground truth", "prediction", "classes"],
    )
