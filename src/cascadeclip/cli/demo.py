"""`cascade-clip demo`: the whole zero-shot story in a miniature world, on a CPU, in minutes, downloading nothing.

It takes the tiny CLIP shipped with the package (or pretrains one, for another seed or recipe, cached after the first
run) on captioned scenes of coloured, patterned shapes, trains Cascade-CLIP and the single-decoder baseline on the 15
seen classes (inductive, then transductive), evaluates all four on the 5 unseen classes too, with two controls (a
supervised ceiling and a linear probe of the CLIP's tokens) and the seen-class shift chosen on held-out training
scenes, and writes a report folder (see `cascadeclip.world.report`). `--seeds N` repeats it for N seeds and reports
mean ± standard deviation. The same seeds give the same numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ..distributed import check_device
from ..outputs import check_output_folder
from ..utils import CACHE_ENV
from ..world.protocol import CHAINS, Execution, WorldRecipe, run_seeds
from ..world.report import HEADLINE, MODELS, aggregate, cell, write_report
from .options import non_negative_int, positive_int

HELP = "pretrain a tiny CLIP and run the zero-shot protocol in a miniature world (CPU, minutes); writes a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = WorldRecipe()
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/demo"),
        help="report folder (default: %(default)s); its runs/ subfolder is rewritten",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=defaults.seed,
        help="world, pretraining and training seed (the first of --seeds)",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="run the protocol for this many seeds, from --seed on (default: 1)",
    )
    parser.add_argument("--cache", type=Path, help=f"cache folder (default: ${CACHE_ENV}, else ~/.cache/cascadeclip)")
    parser.add_argument(
        "--iters", type=positive_int, default=defaults.iters, help="inductive iterations (default: %(default)s)"
    )
    parser.add_argument(
        "--clip-steps",
        type=positive_int,
        default=defaults.clip_steps,
        help="tiny CLIP pretraining steps (default: %(default)s)",
    )
    parser.add_argument("--train-images", type=positive_int, default=defaults.train_images, help="default: %(default)s")
    parser.add_argument("--val-images", type=positive_int, default=defaults.val_images, help="default: %(default)s")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=available_cores(),
        help="cores to use (default: those available to this process, %(default)s): the training runs go to as many "
        "processes of one thread each, so that their numbers do not depend on this value",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the segmentation models train (default: %(default)s; numbers differ by device)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="toy sizes, seconds: checks that the whole chain works (its numbers mean nothing)",
    )


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    check_output_folder(args.out, "--out")
    if args.cache is not None:
        check_output_folder(args.cache, "--cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    if args.smoke:
        recipe = WorldRecipe.smoke(args.seed)
    else:
        recipe = WorldRecipe(
            seed=args.seed,
            train_images=args.train_images,
            val_images=args.val_images,
            iters=args.iters,
            clip_steps=args.clip_steps,
        )
    started = time.time()
    announce = lambda stage: print(f"== {stage}", flush=True)  # noqa: E731
    how = Execution(args.cache, announce=announce, device=args.device, jobs=min(args.threads, len(CHAINS)))
    results = run_seeds(recipe, args.seeds, args.out, how)
    report = write_report(results, recipe, args.out, time.time() - started)
    stats = aggregate(results)
    for name in MODELS:
        print(
            f"{name:>20}: " + "  ".join(f"{label} {cell(stats[f'{name} {label}']):>11}" for label in HEADLINE.values())
        )
    print(
        f"supervised control mIoU {cell(stats['supervised mIoU'])}; tiny CLIP zero-shot accuracy on unseen objects "
        f"{cell(stats['clip zero-shot unseen'])}%"
    )
    print(f"wrote {report} ({(time.time() - started) / 60:.1f} min)")
    return 0
