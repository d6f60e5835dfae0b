"""`cascade-clip test`: the paper's zero-shot evaluation protocol on a dataset split (docs/method.md, Evaluation
protocol).

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

from ..config import Config, to_dict
from ..config.presets import resolve_config
from ..data.datasets import read_image
from ..engine.distributed import DistInfo, cleanup, init_distributed
from ..evaluation import class_text, evaluate, evaluation_share, results_table
from ..evaluation.report import prediction_picture
from ..factory import load_checkpoint
from ..utils import atomic_write

HELP = "evaluate a checkpoint on a dataset split: per-class IoU, mIoU(seen), mIoU(unseen), hIoU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="preset name (e.g. voc-inductive, coco-to-voc) or a YAML config file")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. test.mode=whole")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="our .safetensors, or an authors' .pth (unpickled: trusted files only)",
    )
    parser.add_argument(
        "--data-root",
        help="folder holding VOCdevkit/ and coco_stuff164k/ "
        "(default: data.root, else $CASCADECLIP_DATA_ROOT, else ./datasets)",
    )
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--show-dir", type=Path, help="write image | ground truth | prediction pictures here")
    parser.add_argument(
        "--clip-weights",
        type=Path,
        help="OpenAI ViT-B-16.pt: its text tower embeds the class names when no .npy is found",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, help="data-loading processes (default: data.num_workers)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="count and list unusable images instead of stopping; the numbers then leave them out "
        "and the exit status is 1",
    )


def _picture_writer(show_dir: Path, cfg: Config):
    def write(item: dict[str, Any], prediction: torch.Tensor) -> None:
        image = read_image(Path(item["image_path"]))
        picture = prediction_picture(
            image, item["label"].numpy(), prediction.numpy(), cfg.classes.names, cfg.classes.unseen
        )
        atomic_write(show_dir / f"{item['name']}.png", lambda tmp: picture.save(tmp, format="PNG"))

    return write


def _evaluate(args: argparse.Namespace, cfg: Config, info: DistInfo) -> dict[str, Any]:
    dataset = evaluation_share(cfg, args.data_root, args.split)  # a missing root or split file fails before the load
    model, stored_classes, report = load_checkpoint(args.checkpoint, base=cfg.model)
    text, text_source = class_text(cfg, model, args.clip_weights)
    model.text_encoder = None  # not needed any more; frees its memory
    model.to(info.device)
    if info.is_main:
        print(report.summary())
        print(f"class embeddings: {text_source}")
        if stored_classes is not None and (stored_classes.names, stored_classes.setting) != (
            cfg.classes.names,
            cfg.classes.setting,
        ):
            print(
                f"note: the checkpoint was trained for {stored_classes.dataset} ({stored_classes.setting}); "
                f"evaluating {cfg.classes.dataset} classes with the {cfg.classes.setting} protocol of {cfg.name}"
            )
        share = f" over {info.world_size} processes" if info.world_size > 1 else ""
        print(
            f"evaluating {cfg.name} on {cfg.classes.dataset} {args.split}{share}: {len(dataset)} images"
            f"{' in process 0' if share else ''}, {cfg.test.mode} inference"
        )
    results = evaluate(
        model,
        cfg,
        text,
        dataset=dataset,
        workers=args.workers,
        device=info.device,
        skip_bad=args.skip_bad,
        progress=info.is_main,
        on_prediction=_picture_writer(args.show_dir, cfg) if args.show_dir else None,
    )
    return results | {"embeddings": text_source}


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
            record = {
                "config": cfg.name,
                "dataset": cfg.classes.dataset,
                "split": args.split,
                "setting": cfg.classes.setting,
                "checkpoint": str(args.checkpoint),
                "test": to_dict(cfg.test),
                **results,
            }
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
            print(f"wrote {args.out}")
        if args.show_dir:
            print(f"pictures in {args.show_dir}")
    return 1 if results["skipped"] else 0
