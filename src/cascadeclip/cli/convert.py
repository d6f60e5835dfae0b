"""`cascade-clip convert`: an authors' `.pth` or OpenAI's `.pt` into safetensors, loadable without pickle; with
`--hub-dir`, also the folder to publish a Cascade-CLIP checkpoint on the Hugging Face Hub (weights, configuration,
model card), which `--checkpoint ORG/NAME` and `Segmenter.from_pretrained("ORG/NAME")` then load by name."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.presets import PRESETS, get_preset
from ..factory import (
    CheckpointError,
    guess_authors_config,
    model_from_authors_state,
    read_authors_checkpoint,
    read_openai_clip,
    save_hub_folder,
    save_model,
    save_openai_clip,
)
from ..outputs import check_output_file, check_output_folder
from ..utils import UserError

HELP = "convert an authors' Cascade-CLIP .pth or OpenAI's CLIP .pt to safetensors (reads a pickle: trusted files only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, help="authors' checkpoint (.pth) or OpenAI CLIP weights (e.g. ViT-B-16.pt)"
    )
    parser.add_argument("output", type=Path, nargs="?", help="the .safetensors file to write")
    parser.add_argument(
        "--hub-dir",
        type=Path,
        metavar="DIR",
        help="also (or instead) write a new folder to publish on the Hugging Face Hub: model.safetensors, "
        "config.json and a model card README.md (with the authors' CC BY-NC 4.0 licence)",
    )
    parser.add_argument(
        "--repo-id", metavar="ORG/NAME", help="the Hub name the folder will have, shown in its model card's examples"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="configuration the checkpoint was trained with (default: recognised from its shapes); stored with it",
    )
    parser.add_argument("--no-text-encoder", action="store_true", help="drop the CLIP text tower from the output")
    parser.add_argument("--overwrite", action="store_true", help="replace the output .safetensors file if it exists")


def _convert_clip(args: argparse.Namespace) -> bool:
    """Write OpenAI CLIP weights as safetensors; False when the source is not a CLIP file."""
    try:
        state = read_openai_clip(args.source)
    except CheckpointError:
        return False
    if args.hub_dir is not None or args.output is None:
        raise UserError(
            f"{args.source} holds OpenAI CLIP weights: give an output .safetensors file; "
            "--hub-dir is for Cascade-CLIP checkpoints"
        )
    save_openai_clip(state, args.output)
    print(f"wrote OpenAI CLIP weights ({len(state)} tensors, fp32) to {args.output}; use it as --clip-weights")
    return True


def check_outputs(args: argparse.Namespace) -> None:
    if args.output is None and args.hub_dir is None:
        raise UserError("give an output .safetensors file, or --hub-dir DIR, or both")
    if args.output is not None and args.output.suffix != ".safetensors":
        raise UserError(f"output {args.output} must end in .safetensors")
    if args.output is not None:
        check_output_file(args.output, "output", {"the source": args.source}, args.overwrite)
    if args.hub_dir is not None:
        check_output_folder(args.hub_dir, "--hub-dir")
        if args.hub_dir.exists() and any(args.hub_dir.iterdir()):
            raise UserError(f"--hub-dir {args.hub_dir} is not an empty folder; give a new folder")


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    if not args.source.is_file():
        raise UserError(f"{args.source} not found" if not args.source.exists() else f"{args.source} is not a file")
    if args.source.suffix != ".pth" and _convert_clip(args):
        return 0
    state, meta = read_authors_checkpoint(args.source)
    guesses = guess_authors_config(state, meta)
    if args.preset:
        if guesses and args.preset not in guesses:
            raise UserError(
                f"{args.source} does not look like {args.preset}: its prompt tokens and loss weights fit "
                f"{', '.join(guesses)}. Give one of those to --preset, or leave --preset out"
            )
        preset = get_preset(args.preset)
    else:
        preset = get_preset(guesses[0]) if len(guesses) == 1 else None
        if preset is None:
            print(
                f"note: the configuration cannot be told from the shapes (candidates: {', '.join(guesses) or 'none'}); "
                "no class set is stored. Pass --preset to store one."
            )
    model, report = model_from_authors_state(
        state, str(args.source), base=preset.model if preset else None, with_text_encoder=not args.no_text_encoder
    )
    print(report.summary())
    classes = preset.classes if preset else None
    info = {"source": str(args.source), "preset": preset.name if preset else None}
    written = f" (configuration {preset.name})" if preset else ""
    if args.output is not None:
        save_model(args.output, model, classes, **info)
        print(f"wrote {args.output}{written}")
    if args.hub_dir is not None:
        save_hub_folder(args.hub_dir, model, classes, repo_id=args.repo_id, **info)
        print(f"wrote {args.hub_dir}/: model.safetensors, config.json, README.md (model card){written}")
    return 0
