"""`cascade-clip test`: the paper's zero-shot evaluation protocol on a dataset split (docs/method.md, Evaluation
protocol), or on every set of a test suite (`evaluation.suite`).

    cascade-clip test voc-inductive --checkpoint voc_inductive.pth --data-root datasets --out results.json
    torchrun --nproc-per-node 4 -m cascadeclip test coco-inductive --checkpoint coco.safetensors
    cascade-clip test --suite ov coco_inductive.pth --data-root datasets --out ov.json

Under torchrun each process takes every N-th image and the counts are summed, so the numbers equal a
single-process run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..config import ClassesConfig, Config, to_dict
from ..config.presets import PRESETS, explicit_keys, resolve_config
from ..data.datasets import read_image
from ..data.eval_dataset import EvalDataset
from ..distributed import DistInfo, check_device, cleanup, init_distributed
from ..evaluation import class_text, evaluate, evaluation_share, results_table
from ..evaluation.report import prediction_picture
from ..evaluation.suite import SUITES, find_suite_sets, suite_row, suite_table
from ..factory import LoadReport, architecture_keys, check_architecture, load_checkpoint
from ..manifest import Manifest
from ..modeling.cascade_clip import CascadeCLIP
from ..outputs import check_output_file, check_output_folder
from ..utils import UserError, atomic_write
from .options import non_negative_int

HELP = "evaluate a checkpoint on a dataset split: per-class IoU, mIoU(seen), mIoU(unseen), hIoU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        metavar="CONFIG|CHECKPOINT",
        help="preset name (e.g. voc-inductive, coco-to-voc) or a YAML config file; with --suite, the checkpoint",
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. test.mode=whole")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="our .safetensors, or an authors' .pth (unpickled: trusted files only); required without --suite",
    )
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        help="evaluate the checkpoint on every set of this suite found under the data root (ov: ADE20K-847, "
        "Pascal Context-459, ADE20K-150, Pascal Context-59/60, Pascal VOC-20/21, Cityscapes) and print one table",
    )
    parser.add_argument(
        "--data-root",
        help="folder holding VOCdevkit/ and coco_stuff164k/ "
        "(default: data.root, else $CASCADECLIP_DATA_ROOT, else ./datasets)",
    )
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    parser.add_argument("--show-dir", type=Path, help="write image | ground truth | prediction pictures here")
    parser.add_argument(
        "--clip-weights",
        type=Path,
        help="OpenAI ViT-B-16.pt: its text tower embeds the class names when no .npy is found",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=non_negative_int, help="data-loading processes (default: data.num_workers)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="count and list unusable images instead of stopping; the numbers then leave them out "
        "and the exit status is 1",
    )


def _picture_writer(show_dir: Path | None, cfg: Config):
    if show_dir is None:
        return None

    def write(item: dict[str, Any], prediction: torch.Tensor) -> None:
        image = read_image(Path(item["image_path"]))
        picture = prediction_picture(
            image, item["label"].numpy(), prediction.numpy(), cfg.classes.names, cfg.classes.unseen
        )
        atomic_write(show_dir / f"{item['name']}.png", lambda tmp: picture.save(tmp, format="PNG"))

    return write


def _check_outputs(args: argparse.Namespace) -> None:
    """UserError, before any work, when the device or an output location (--out, --show-dir) is unusable."""
    check_device(args.device)
    if args.out:
        inputs = {
            "--checkpoint": args.checkpoint,
            "--clip-weights": args.clip_weights,
            "the CONFIG argument": args.config,
        }
        check_output_file(args.out, "--out", inputs, args.overwrite)
    if args.show_dir:
        check_output_folder(args.show_dir, "--show-dir")
        if args.out and Path(args.out).resolve() == Path(args.show_dir).resolve():
            raise UserError(f"--out {args.out} is also --show-dir; give the results file another name")


def _refuse_foreign_pictures(show_dir: Path | None, dataset: EvalDataset) -> list[Path]:
    """The pictures `dataset` will write into `show_dir`; UserError when a file of the user's has one of their
    names (it would be overwritten), checked before the model is loaded."""
    if show_dir is None:
        return []
    pictures = [show_dir / f"{sample.name}.png" for sample in dataset.samples]
    Manifest(show_dir).refuse_foreign(pictures, "--show-dir")
    return pictures


def _claim_pictures(show_dir: Path | None, pictures: list[Path]) -> None:
    if show_dir is not None:
        Manifest(show_dir).claim(pictures, "--show-dir")


def _evaluate(args: argparse.Namespace, cfg: Config, info: DistInfo) -> dict[str, Any]:
    dataset = evaluation_share(cfg, args.data_root, args.split)  # a missing root or split file fails before the load
    pictures = _refuse_foreign_pictures(args.show_dir, dataset)
    model, stored_classes, report = load_checkpoint(args.checkpoint, base=cfg.model)
    trained_for = _check_checkpoint_fits(args, cfg, model, stored_classes, report)
    text, text_source = class_text(cfg, model, args.clip_weights)
    model.text_encoder = None  # not needed any more; frees its memory
    model.to(info.device)
    _claim_pictures(args.show_dir, pictures)
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
        elif trained_for and cfg.classes.dataset not in trained_for:
            print(
                f"note: the checkpoint looks trained for {' or '.join(report.looks_like)}; evaluating "
                f"{cfg.classes.dataset} classes with the {cfg.classes.setting} protocol of {cfg.name}"
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
        on_prediction=_picture_writer(args.show_dir, cfg),
    )
    return results | {"embeddings": text_source}


def _architecture_set(spec: str | None, overrides: list[str]) -> list[str]:
    """The architecture keys the user set (in the YAML file `spec`, or as overrides), even to the preset's own value:
    the checkpoint's configuration is used, and each of these must agree with it (tensor shapes do not show e.g.
    tap_blocks or head counts). The keys left alone come from the file."""
    set_here = explicit_keys(spec, overrides)
    return [key for key in architecture_keys() if f"model.{key}" in set_here]


def _check_checkpoint_fits(
    args: argparse.Namespace, cfg: Config, model: CascadeCLIP, stored: ClassesConfig | None, report: LoadReport
) -> set[str]:
    """The dataset(s) the checkpoint may have been trained on (stored with it, or told by an authors' file's
    shapes); UserError when it cannot be what the configuration evaluates.

    A zero-shot configuration (one with unseen classes) evaluates a model trained on its own dataset; cross-dataset
    evaluation has presets without unseen classes.
    """
    check_architecture(model, cfg.model, str(args.checkpoint), _architecture_set(args.config, args.overrides))
    trained_for = {stored.dataset} if stored else {PRESETS[name].classes.dataset for name in report.looks_like}
    if len(trained_for) == 1 and cfg.classes.dataset not in trained_for and cfg.classes.unseen:
        raise UserError(
            f"{args.checkpoint} was trained on {next(iter(trained_for))}, but {cfg.name} scores the zero-shot split "
            f"of {cfg.classes.dataset}: give a checkpoint trained on {cfg.classes.dataset}, or the configuration it "
            "was trained with (cross-dataset evaluation has its own presets, e.g. coco-to-voc)"
        )
    return trained_for


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return _run_suite(args)
    if args.checkpoint is None:
        raise UserError("--checkpoint is required: the weights to evaluate (our .safetensors or an authors' .pth)")
    cfg = resolve_config(args.config, args.overrides)
    _check_outputs(args)
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
            text = json.dumps(record, indent=2, allow_nan=False) + "\n"
            atomic_write(args.out, lambda tmp: tmp.write_text(text))
            print(f"wrote {args.out}")
        if args.show_dir:
            print(f"pictures in {args.show_dir}")
    return 1 if results["skipped"] else 0


def _run_suite(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        raise UserError(
            f"with --suite the checkpoint is the argument: cascade-clip test --suite {args.suite} CHECKPOINT "
            "(drop --checkpoint)"
        )
    checkpoint = Path(args.config)
    _check_outputs(args)
    info = init_distributed(args.device)
    try:
        present, absent = find_suite_sets(args.suite, args.data_root, args.split, args.overrides)
        show_dirs = [args.show_dir / s.name if args.show_dir else None for s in present]
        for show_dir in filter(None, show_dirs):  # a file of the user's named like a set's folder
            check_output_folder(show_dir, "--show-dir")
        pictures = [_refuse_foreign_pictures(d, s.samples) for d, s in zip(show_dirs, present, strict=True)]
        first = present[0].cfg  # every set of a suite has the same model configuration
        model, _, report = load_checkpoint(checkpoint, base=first.model)
        check_architecture(model, first.model, str(checkpoint), _architecture_set(None, args.overrides))
        texts = [class_text(s.cfg, model, args.clip_weights) for s in present]  # every name fails here, or none
        model.text_encoder = None
        model.to(info.device)
        for show_dir, names in zip(show_dirs, pictures, strict=True):
            _claim_pictures(show_dir, names)
        if info.is_main:
            print(report.summary())
            print(f"{args.suite} suite: {', '.join(s.name for s in present)}; absent: {len(absent)}")
        rows = []
        for suite_set, (text, source), show_dir in zip(present, texts, show_dirs, strict=True):
            if info.is_main:
                print(f"{suite_set.name}: {len(suite_set.samples)} images, class embeddings: {source}")
            results = evaluate(
                model,
                suite_set.cfg,
                text,
                dataset=suite_set.samples,
                workers=args.workers,
                device=info.device,
                skip_bad=args.skip_bad,
                progress=info.is_main,
                on_prediction=_picture_writer(show_dir, suite_set.cfg),
            )
            rows.append(suite_row(suite_set.name, suite_set.cfg, results, source))
    finally:
        cleanup()
    if info.is_main:
        print(suite_table(rows, absent))
        if args.out:
            record = {"suite": args.suite, "checkpoint": str(checkpoint), "split": args.split, "sets": rows}
            record["absent"] = absent
            text = json.dumps(record, indent=2, allow_nan=False) + "\n"
            atomic_write(args.out, lambda tmp: tmp.write_text(text))
            print(f"wrote {args.out}")
    return 1 if any(row["skipped"] for row in rows) else 0
