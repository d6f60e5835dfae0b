"""The zero-shot evaluation: slide inference over a split, argmax, dataset-level IoU (docs/method.md, Evaluation
protocol).

`evaluate(model, cfg)` is what `cascade-clip test` and the training loop's periodic evaluation call; `evaluate_samples`
is its loop over any iterable of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import ClassesConfig, Config, TestConfig
from ..config.dataset_file import resolved
from ..data.eval_dataset import EvalDataset, eval_dataset, eval_loader
from ..distributed import all_gather_objects, rank_and_world_size
from ..factory import load_text_encoder
from ..inference.predict import protocol_scores, seen_shift_vector
from ..inference.text_embeddings import EMBEDDINGS_DIR_ENV, class_embeddings, find_embedding_file
from ..modeling.cascade_clip import CascadeCLIP
from ..utils import UserError, ignore_index_for
from .metric import IoUAccumulator

# on_prediction(sample dict, (H, W) int64 prediction on the CPU), after each image
PredictionCallback = Callable[[dict[str, Any], torch.Tensor], None]


def evaluate(
    model: CascadeCLIP,
    cfg: Config,
    text: torch.Tensor | None = None,
    data_root: str | Path | None = None,
    split: str = "val",
    dataset: EvalDataset | None = None,
    workers: int | None = None,
    device: torch.device | str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    on_prediction: PredictionCallback | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on the `cfg.classes.dataset` split with the paper's protocol; returns the metric dict.

    For the training loop's periodic evaluation: `results = evaluate(model, cfg, text)` on every process, then
    `results["hIoU"]`, `results["mIoU_seen"]`, `results["mIoU_unseen"]`. The model's train/eval mode is restored.

    Args:
        model: the bare model (unwrap DDP: `ddp.module`), on its device.
        cfg: the run's configuration: `classes` (names, unseen, setting: the inductive setting subtracts the
            seen-class shift), `test` (short side, slide window and stride), `data` (root, num_workers).
        text: (C, D) embeddings of all queried `cfg.classes.names` in order (not only the seen classes trained on;
            all but the background class, if any); None: from `cfg.classes.text_embeddings` or the model's text
            tower (see `class_text`).
        data_root: dataset root; None: `cfg.data.root`, else $CASCADECLIP_DATA_ROOT, else ./datasets.
        dataset: this process's samples when already built with `evaluation_share` (which checks the root and
            split file, e.g. before a long model load); None: built here from `data_root` and `split`.
        workers: data-loading processes; None: `cfg.data.num_workers`.
        device: where to run; None: the model's device.
        skip_bad: count and list unusable samples instead of raising UserError at the first.
        progress: show a progress bar (images/s, ETA) of this process's share.
        on_prediction: called after each image with (sample dict, (H, W) int64 prediction on the CPU).

    Under torchrun every process must call this: each takes every world_size-th image and the counts are summed,
    so all processes return the same numbers, equal to a single-process run's.

    Returns:
        `IoUAccumulator.results` (percentages; None where a mean has no class): "mIoU_seen", "mIoU_unseen", "hIoU",
        "mIoU", "aAcc", "images", "per_class" [{"index", "name", "split", "IoU", "Acc", "pixels"}], plus "skipped"
        [{"name", "error"}] for the samples left out with `skip_bad`, and "background" (how the background class
        was predicted, or None).
    """
    cfg = resolved(cfg)
    if dataset is None:
        dataset = evaluation_share(cfg, data_root, split)
    if text is None:
        text, _ = class_text(cfg, model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    workers = cfg.data.num_workers if workers is None else workers
    loader = eval_loader(dataset, workers, pin_memory=device.type == "cuda")
    return evaluate_samples(model, loader, text, cfg.classes, cfg.test, device, skip_bad, progress, on_prediction)


def evaluation_share(cfg: Config, data_root: str | Path | None = None, split: str = "val") -> EvalDataset:
    """This process's share of the `cfg.classes.dataset` split (every world_size-th image; all of it in a single
    process); `data_root` None: `cfg.data.root`, else $CASCADECLIP_DATA_ROOT, else ./datasets."""
    rank, world_size = rank_and_world_size()
    root = data_root or cfg.data.root or None
    return eval_dataset(cfg.classes.dataset, root, split, cfg.test.short_side, rank, world_size)


def class_text(cfg: Config, model: CascadeCLIP, clip_weights: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """(C, D) test-time embeddings of the queried classes (all but a background class) and where they came from:
    the configured `.npy` when found (the authors' files give the published numbers), else a CLIP text tower
    (`clip_weights`, else the model's own)."""
    classes = cfg.classes
    embedding_file = find_embedding_file(classes.text_embeddings) if classes.text_embeddings else None
    if embedding_file is not None:
        source, text_encoder = str(embedding_file), None
    elif clip_weights is not None:
        source, text_encoder = f"the text tower of {clip_weights}", load_text_encoder(clip_weights)
    else:
        source, text_encoder = "the checkpoint's text tower", model.text_encoder
    queried = tuple(classes.names[i] for i in classes.queried)
    try:
        text = class_embeddings(queried, classes.templates, str(embedding_file or ""), text_encoder)
    except ValueError as err:
        raise UserError(str(err)) from None
    if text.shape[1] != model.cfg.head.dim:
        raise UserError(
            f"class embeddings from {source} are {text.shape[1]}-d but the model expects "
            f"{model.cfg.head.dim}-d; use the embeddings of the model's CLIP"
        )
    if embedding_file is None and classes.text_embeddings:
        source += f" ({classes.text_embeddings} not found as a path or in ${EMBEDDINGS_DIR_ENV})"
    return text, source


@torch.no_grad()
def evaluate_samples(
    model: CascadeCLIP,
    samples: Iterable[dict[str, Any]],
    text: torch.Tensor,
    classes: ClassesConfig,
    test: TestConfig,
    device: torch.device | str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    on_prediction: PredictionCallback | None = None,
) -> dict[str, Any]:
    """Score `model` on `samples` and return the metrics of `IoUAccumulator.results` plus "skipped" (see `evaluate`).

    Args:
        model: the bare model (not a DDP wrapper); put in eval mode here, its previous mode restored after.
        samples: items as `data.eval_dataset.EvalDataset` yields them (a DataLoader over it, or any iterable of
            dicts with "image" (3, H', W') normalised, "label" (H, W) class ids / 255, "name", optional "error").
            Under torchrun each process passes its own share; the counts are summed over processes.
        text: (Q, D) embeddings of the queried classes (`classes.queried`: all but the background class), in order.
        classes: class names, unseen indices and setting (the inductive setting subtracts the seen-class shift),
            background class (predicted where no queried class reaches `test.background_threshold`).
        test: inference mode, window size and stride, background threshold.
        skip_bad: count and list unreadable samples instead of stopping at the first (UserError).
        progress: show a progress bar (images/s, ETA).
        on_prediction: called with (item, (H, W) int64 prediction on the CPU) after each image, e.g. to draw it.
    """
    names, queried = classes.names, torch.tensor(classes.queried)
    if text.shape[0] != len(queried):
        but = f" (all but the background class {classes.background!r})" if classes.background else ""
        raise ValueError(f"{text.shape[0]} class embeddings for {len(queried)} class names{but}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shift = seen_shift_vector(len(names), classes.seen, classes.test_seen_shift)[queried].to(device)
    text, queried = text.to(device), queried.to(device)
    counts = IoUAccumulator(len(names), device, ignore_index=ignore_index_for(len(names)))
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
            image = item["image"].to(device, non_blocking=True)[None]
            scores = protocol_scores(model, image, text, shift, test, out_size=tuple(label.shape))[0]
            if not torch.isfinite(scores).all():
                raise UserError(
                    f"the model's scores for {item['name']} are not finite numbers (NaN or infinity): its weights "
                    "or the class embeddings are damaged"
                )
            prediction = queried[scores.argmax(0)]
            if classes.background_index is not None:
                below = best_probability(scores, shift) < test.background_threshold
                prediction[below] = classes.background_index
            counts.update(prediction, label)
            if on_prediction is not None:
                on_prediction(item, prediction.cpu())
    finally:
        bar.close()
        model.train(was_training)
    counts.all_reduce()
    results = counts.results(names, classes.unseen)
    results["skipped"] = [entry for shard in all_gather_objects(skipped) for entry in shard]
    results["background"] = background_rule(classes, test)
    return results


def best_probability(scores: torch.Tensor, shift: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(Q, H, W) scores after the seen-class shift (Q,) -> (H, W) highest class probability before it, computed
    `chunk` classes at a time (a shifted copy of all scores can take gigabytes)."""
    best = None
    for start in range(0, scores.shape[0], chunk):
        part = (scores[start : start + chunk] + shift[start : start + chunk, None, None]).amax(0)
        best = part if best is None else torch.maximum(best, part)
    return best


def background_rule(classes: ClassesConfig, test: TestConfig) -> dict[str, Any] | None:
    """How the background class is predicted, for the results; None without one."""
    if classes.background_index is None:
        return None
    return {
        "class": classes.background,
        "threshold": test.background_threshold,
        "rule": "pixels where no queried class reaches this probability (test.background_threshold: a fixed "
        "value, not tuned on the evaluated images)",
    }


def _length(samples: Iterable) -> int | None:
    try:
        return len(samples)  # type: ignore[arg-type]
    except TypeError:
        return None
