"""`cascade-clip train`: the authors' training recipe, on one process or many (torchrun), resumable."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..config.presets import resolve_config
from ..distributed import check_device, cleanup, rank_from_environment
from ..engine.run_directory import RunDirectory
from ..engine.trainer import check_training_inputs, train
from ..outputs import check_output_folder

HELP = "train Cascade-CLIP (inductive or transductive) from a preset or a YAML config; resumable, torchrun-ready"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a preset name (e.g. voc-inductive) or a YAML file")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. train.iters=1000")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="delete the run already in --run-dir and start over")
    parser.add_argument("--data-root", help="dataset root (default: $CASCADECLIP_DATA_ROOT, else ./datasets)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config, args.overrides, options={"data.root": ("--data-root", args.data_root)})
    check_device(args.device)
    run_dir = check_output_folder(args.run_dir or Path("runs") / cfg.name, "--run-dir")
    check_training_inputs(cfg)  # before the run folder is made for the lock
    run_folder = RunDirectory(run_dir)
    if args.resume:
        run_folder.check_resumable()
    # Under torchrun only the first process writes into the run folder, so only it holds the folder.
    hold = run_folder.exclusive() if rank_from_environment() == 0 else contextlib.nullcontext()
    try:
        with hold:
            result = train(cfg, run_dir, resume=args.resume, force=args.force, device=args.device)
    finally:
        cleanup()
    if result.start == result.iteration:
        print(
            f"the run had already finished its {result.iteration} iterations; nothing to do (raise train.iters to "
            f"train on); weights: {result.checkpoint}"
        )
    else:
        print(f"finished {result.iteration} iterations; last loss {result.last_loss:.4f}; weights: {result.checkpoint}")
    return 0
