"""`cascade-clip test`: the zero-shot evaluation protocol of the paper (spec §3.4-3.7) on a dataset split.

    cascade-clip test voc-inductive --checkpoint voc_inductive.pth --data-root datasets --out results.json
    torchrun --nproc-per-node 4 -m cascadeclip test coco-inductive --checkpoint coco.safetensors

Under torchrun each process takes every N-th image and the counts are summed, so the numbers equal a
single-process run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import atomic_write
from ..config import Config, to_dict
from ..data.datasets import read_image
from ..data.eval_dataset import eval_dataset, eval_loader
from ..distributed import DistInfo, cleanup, init_distributed
from ..errors import UserError
from ..evaluation import evaluate, results_table
from ..evaluation.report import prediction_picture
from ..factory import load_checkpoint, load_text_encoder
from ..modeling.cascade_clip import CascadeCLIP
from ..presets import resolve_config
from ..text_embeddings import EMBEDDINGS_DIR_ENV, class_embeddings, find_embedding_file

HELP = "evaluate a checkpoint on a dataset split: per-class IoU, mIoU(seen), mIoU(unseen), hIoU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="preset name (e.g. voc-inductive, coco-to-voc) or a YAML config file")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. test.mode=whole")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our .safetensors, or an authors' .pth (unpickled: trusted files only)")  # fmt: skip
    parser.add_argument("--data-root", help="folder holding VOCdevkit/ and coco_stuff164k/ "
                        "(default: data.root, else $CASCADECLIP_DATA_ROOT, else ./datasets)")  # fmt: skip
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--show-dir", type=Path, help="write image | ground truth | prediction pictures here")
    parser.add_argument("--clip-weights", type=Path,
                        help="OpenAI ViT-B-16.pt: its text tower embeds the class names when no .npy is found")  # fmt: skip
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, help="data-loading processes (default: data.num_workers)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="count and list unusable images instead of stopping; the numbers then leave them out "
                        "and the exit status is 1")  # fmt: skip


def class_text(cfg: Config, model: CascadeCLIP, clip_weights: Path | None) -> tuple[torch.Tensor, str]:
    """(C, D) class embeddings and where they came from: the configured .npy when found, else a CLIP text tower
    (--clip-weights, else the checkpoint's own)."""
    classes = cfg.classes
    embedding_file = find_embedding_file(classes.text_embeddings) if classes.text_embeddings else None
    if embedding_file is not None:
        source = str(embedding_file)
        text_encoder = None
    elif clip_weights is not None:
        source, text_encoder = f"the text tower of {clip_weights}", load_text_encoder(clip_weights)
    else:
        source, text_encoder = "the checkpoint's text tower", model.text_encoder
    try:
        text = class_embeddings(classes.names, classes.templates, str(embedding_file or ""), text_encoder)
    except ValueError as err:
        raise UserError(str(err)) from None
    if text.shape[1] != model.cfg.head.dim:
        raise UserError(f"class embeddings from {source} are {text.shape[1]}-d but the model expects "
                        f"{model.cfg.head.dim}-d; use the embeddings of the model's CLIP")  # fmt: skip
    if embedding_file is None and classes.text_embeddings:
        source += f" ({classes.text_embeddings} not found as a path or in ${EMBEDDINGS_DIR_ENV})"
    return text, source


def _picture_writer(show_dir: Path, cfg: Config):
    def write(item: dict[str, Any], prediction: torch.Tensor) -> None:
        image = read_image(Path(item["image_path"]))
        picture = prediction_picture(image, item["label"].numpy(), prediction.numpy(), cfg.classes.names,
                                     cfg.classes.unseen)  # fmt: skip
        atomic_write(show_dir / f"{item['name']}.png", lambda tmp: picture.save(tmp, format="PNG"))

    return write


def _evaluate(args: argparse.Namespace, cfg: Config, info: DistInfo) -> dict[str, Any]:
    root = args.data_root or cfg.data.root or None
    dataset = eval_dataset(cfg.classes.dataset, root, args.split, cfg.test.short_side, info.rank, info.world_size)
    model, stored_classes, report = load_checkpoint(args.checkpoint, base=cfg.model)
    text, text_source = class_text(cfg, model, args.clip_weights)
    if model.text_encoder is not None:
        model.text_encoder = None  # not needed any more; frees its memory
    model.to(info.device)
    if info.is_main:
        print(report.summary())
        print(f"class embeddings: {text_source}")
        if stored_classes is not None and (stored_classes.names, stored_classes.setting) != (cfg.classes.names, cfg.classes.setting):
            print(f"note: the checkpoint was trained for {stored_classes.dataset} ({stored_classes.setting}); "
                  f"evaluating {cfg.classes.dataset} classes with the {cfg.classes.setting} protocol of {cfg.name}")  # fmt: skip
        print(f"evaluating {cfg.name} on {cfg.classes.dataset} {args.split}: {len(dataset) * info.world_size} images"
              f"{f' over {info.world_size} processes' if info.world_size > 1 else ''}, {cfg.test.mode} inference")  # fmt: skip
    workers = cfg.data.num_workers if args.workers is None else args.workers
    return evaluate(
        model, eval_loader(dataset, workers, pin_memory=info.device.type == "cuda"), text, cfg.classes, cfg.test,
        device=info.device, skip_bad=args.skip_bad, progress=info.is_main,
        on_prediction=_picture_writer(args.show_dir, cfg) if args.show_dir else None,
    ) | {"embeddings": text_source}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config, args.overrides)
    info = init_distributed(args.device)
    try:
        results = _evaluate(args, cfg, info)
    finally:
        cleanup()
    if info.is_main:
        print(results_table(results))
        if args.out:
            record = {"config": cfg.name, "dataset": cfg.classes.dataset, "split": args.split,
                      "setting": cfg.classes.setting, "checkpoint": str(args.checkpoint), "test": to_dict(cfg.test),
                      **results}  # fmt: skip
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
            print(f"wrote {args.out}")
        if args.show_dir:
            print(f"pictures in {args.show_dir}")
    return 1 if results["skipped"] else 0
