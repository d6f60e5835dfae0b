"""`cascade-clip demo`: the whole zero-shot story in a miniature world, on a CPU, in minutes, downloading nothing.

It pretrains a tiny CLIP on captioned scenes of coloured, patterned shapes (cached after the first run), trains
Cascade-CLIP and the single-decoder baseline on the 15 seen classes (inductive, then transductive), evaluates all four
on the 5 unseen classes too, and writes a report folder (see `cascadeclip.world.report`). The same seed gives the
same numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..engine.distributed import check_device
from ..outputs import check_output_folder
from ..utils import CACHE_ENV
from ..world.protocol import WorldRecipe, run_protocol
from ..world.report import HEADLINE, headline, percent, write_report
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
        "--seed", type=non_negative_int, default=defaults.seed, help="world, pretraining and training seed"
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
        default=1,
        help="CPU threads for torch (default: %(default)s; the models are tiny, and a single thread "
        "never stalls waiting for a busy core)",
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
    result = run_protocol(
        recipe, args.out, cache=args.cache, announce=lambda stage: print(f"== {stage}", flush=True), device=args.device
    )
    report = write_report(result, recipe, args.out, time.time() - started)
    facts = headline(result)
    for name, m in facts["models"].items():
        print(f"{name:>20}: " + "  ".join(f"{key} {percent(m[key]):>5}" for key in HEADLINE))
    print(
        f"chance mIoU_unseen {facts['chance_unseen']:.1f}; tiny CLIP zero-shot accuracy on unseen objects "
        f"{facts['clip_zero_shot_accuracy_unseen']:.1f}%"
    )
    print(f"wrote {report} ({(time.time() - started) / 60:.1f} min)")
    return 0
