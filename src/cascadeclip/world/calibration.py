"""The seen-class shift of the inductive setting, chosen on training data only.

At test time the inductive protocol subtracts a constant from the seen classes' probabilities, so that unseen
classes, never trained on, are not always outscored (the authors use 0.1, tuned for OpenAI's CLIP). The miniature
world's tiny CLIP is another CLIP, so the demo chooses its own value by a rule fixed before any result was seen:

    evaluate the trained inductive model on the held-out training scenes (the world dataset's `heldout` split: scenes
    of the training distribution that no model is trained on) at every shift of `SHIFT_GRID`, and take the shift
    with the best hIoU; a tie goes to the smallest shift.

The choice uses the held-out scenes' labels of every class, the unseen classes included: it is a use of unseen-class
labels (of training scenes, never of the validation scenes that are reported), which a strict zero-shot protocol
would not allow; the report says so next to the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import ClassesConfig, Config
from ..config.dataset_file import resolved
from ..data.eval_dataset import eval_loader
from ..evaluation import IoUAccumulator
from ..evaluation.evaluate import class_text, evaluation_share
from ..inference.predict import protocol_scores, seen_shift_vector
from ..modeling.cascade_clip import CascadeCLIP
from ..utils import ignore_index_for

SHIFT_GRID = tuple(round(0.02 * i, 2) for i in range(16))  # 0, 0.02, ..., 0.30
CALIBRATION_SPLIT = "heldout"


@torch.no_grad()
def image_scores(
    model: CascadeCLIP, cfg: Config, split: str, data_root: str | Path | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(Q, H, W) class probabilities without any shift, and the (H, W) label, of each image of `split`, by the
    evaluation protocol of `cfg.test`. The model is in eval mode while this runs."""
    text, _ = class_text(resolved(cfg), model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for item in eval_loader(evaluation_share(cfg, data_root, split), workers=0):
            if item.get("error") is not None:
                raise ValueError(item["error"])
            label = item["label"]
            image = item["image"].to(device)[None]
            yield protocol_scores(model, image, text.to(device), None, cfg.test, out_size=tuple(label.shape))[0], label
    finally:
        model.train(was_training)


def sweep_shifts(
    scored: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: ClassesConfig, shifts: tuple[float, ...]
) -> list[dict[str, Any]]:
    """The metrics of each shift (`IoUAccumulator.results`, percentages), from unshifted scores.

    Subtracting the shift from the probabilities of seen classes after computing them gives the same argmax as
    evaluating at that shift: the protocol subtracts it from the probabilities too, and averaging or resizing
    probabilities commutes with subtracting a per-class constant.
    """
    names, queried = classes.names, torch.tensor(classes.queried)
    counts = [IoUAccumulator(len(names), ignore_index=ignore_index_for(len(names))) for _ in shifts]
    vectors = [seen_shift_vector(len(names), classes.seen, shift)[queried] for shift in shifts]
    for scores, label in scored:
        for accumulator, vector in zip(counts, vectors, strict=True):
            shifted = scores - vector.to(scores.device)[:, None, None]
            accumulator.update(queried.to(scores.device)[shifted.argmax(0)].cpu(), label)
    return [accumulator.results(names, classes.unseen) for accumulator in counts]


def choose_shift(shifts: tuple[float, ...], results: list[dict[str, Any]]) -> float:
    """The shift with the best hIoU (None counts as 0); the smallest one among equals."""
    best = max(range(len(shifts)), key=lambda i: (results[i]["hIoU"] or 0.0, -shifts[i]))
    return shifts[best]


def evaluate_shifts(
    model: CascadeCLIP, cfg: Config, split: str, shifts: tuple[float, ...], data_root: str | Path | None = None
) -> list[dict[str, Any]]:
    """The evaluation of `model` on `split` at each of `shifts` (as `evaluate` with that seen-class shift would give),
    with one pass of the model over the images."""
    cfg = resolved(cfg)
    return sweep_shifts(image_scores(model, cfg, split, data_root), cfg.classes, shifts)


def calibrate(model: CascadeCLIP, cfg: Config, data_root: str | Path | None = None) -> dict[str, Any]:
    """Apply the rule of this module to an inductive model: {"shift": the chosen value, "grid": [{"shift",
    "mIoU_seen", "mIoU_unseen", "hIoU"}, ...] on the held-out training scenes}."""
    results = evaluate_shifts(model, cfg, CALIBRATION_SPLIT, SHIFT_GRID, data_root)
    grid = [
        {"shift": shift, **{k: r[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU")}}
        for shift, r in zip(SHIFT_GRID, results, strict=True)
    ]
    return {"shift": choose_shift(SHIFT_GRID, results), "grid": grid}
