"""The zero-shot evaluation loop (spec §3.4-3.6): slide inference over a split, argmax, dataset-level IoU.

Used by `cascade-clip test` and by the training loop's periodic evaluation:

    dataset = eval_dataset("voc", root, "val", cfg.test.short_side, rank, world_size)
    results = evaluate(model, eval_loader(dataset, workers=4), text, cfg.classes, cfg.test)
    results["hIoU"], results["mIoU_seen"], results["mIoU_unseen"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm import tqdm

from ..config import ClassesConfig, TestConfig
from ..distributed import all_gather_objects
from ..errors import UserError
from ..inference import predict_scores, seen_shift_vector
from ..modeling.cascade_clip import CascadeCLIP
from .metric import IoUAccumulator


@torch.no_grad()
def evaluate(
    model: CascadeCLIP,
    samples: Iterable[dict[str, Any]],
    text: torch.Tensor,
    classes: ClassesConfig,
    test: TestConfig,
    device: torch.device | str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    on_prediction: Callable[[dict[str, Any], torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Score `model` on `samples` and return the metrics of `IoUAccumulator.results` plus "skipped".

    Args:
        model: the bare model (not a DDP wrapper); put in eval mode here, its previous mode restored after.
        samples: items as `data.eval_dataset.EvalDataset` yields them (a DataLoader over it, or any iterable of
            dicts with "image" (3, H', W') normalised, "label" (H, W) class ids / 255, "name", optional "error").
            Under torchrun each process passes its own share; the counts are summed over processes.
        text: (C, D) class embeddings, rows in `classes.names` order.
        classes: class names, unseen indices and setting (the inductive setting subtracts the seen-class shift).
        test: inference mode, window size and stride.
        skip_bad: count and list unreadable samples instead of stopping at the first (UserError).
        progress: show a progress bar (images/s, ETA).
        on_prediction: called with (item, (H, W) int64 prediction on the CPU) after each image, e.g. to draw it.
    """
    names = classes.names
    if text.shape[0] != len(names):
        raise ValueError(f"{text.shape[0]} class embeddings for {len(names)} class names")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shift = seen_shift_vector(len(names), classes.seen, classes.test_seen_shift).to(device)
    text = text.to(device)
    counts = IoUAccumulator(len(names), device)
    skipped = []
    was_training = model.training
    model.eval()
    bar = tqdm(samples, total=_length(samples), unit="img", disable=not progress, dynamic_ncols=True, leave=True)
    try:
        for item in bar:
            if item.get("error") is not None:
                if not skip_bad:
                    raise UserError(f"{item['error']} (`cascade-clip check-data` lists every problem of a dataset)")
                skipped.append({"name": item["name"], "error": item["error"]})
                bar.set_postfix(skipped=len(skipped))
                continue
            label = item["label"].to(device, non_blocking=True)
            scores = predict_scores(
                model, item["image"].to(device, non_blocking=True)[None], text, shift, mode=test.mode,
                crop=test.crop_size, stride=test.stride, window_batch=test.window_batch, out_size=tuple(label.shape),
            )  # fmt: skip
            prediction = scores[0].argmax(0)
            counts.update(prediction, label)
            if on_prediction is not None:
                on_prediction(item, prediction.cpu())
    finally:
        bar.close()
        model.train(was_training)
    counts.all_reduce()
    results = counts.results(names, classes.unseen)
    results["skipped"] = [entry for shard in all_gather_objects(skipped) for entry in shard]
    return results


def _length(samples: Iterable) -> int | None:
    try:
        return len(samples)  # type: ignore[arg-type]
    except TypeError:
        return None
