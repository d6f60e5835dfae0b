"""`cascade-clip convert`: an authors' `.pth` or OpenAI's `.pt` into safetensors, loadable without pickle."""

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
    save_model,
    save_openai_clip,
)
from ..outputs import check_output_file
from ..utils import UserError

HELP = "convert an authors' Cascade-CLIP .pth or OpenAI's CLIP .pt to safetensors (reads a pickle: trusted files only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, help="authors' checkpoint (.pth) or OpenAI CLIP weights (e.g. ViT-B-16.pt)"
    )
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="configuration the checkpoint was trained with (default: recognised from its shapes); stored with it",
    )
    parser.add_argument("--no-text-encoder", action="store_true", help="drop the CLIP text tower from the output")


def _convert_clip(args: argparse.Namespace) -> bool:
    """Write OpenAI CLIP weights as safetensors; False when the source is not a CLIP file."""
    try:
        state = read_openai_clip(args.source)
    except CheckpointError:
        return False
    save_openai_clip(state, args.output)
    print(f"wrote OpenAI CLIP weights ({len(state)} tensors, fp32) to {args.output}; use it as --clip-weights")
    return True


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".safetensors":
        raise UserError(f"output {args.output} must end in .safetensors")
    check_output_file(args.output, "output")
    if not args.source.is_file():
        raise UserError(f"{args.source} not found" if not args.source.exists() else f"{args.source} is not a file")
    if args.output.exists() and args.output.resolve() == args.source.resolve():
        raise UserError(f"output {args.output} is the source itself; give another name")
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
    save_model(
        args.output,
        model,
        preset.classes if preset else None,
        source=str(args.source),
        preset=preset.name if preset else None,
    )
    print(f"wrote {args.output}" + (f" (configuration {preset.name})" if preset else ""))
    return 0
