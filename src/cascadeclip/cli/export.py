"""`cascade-clip export OUT.onnx`: the model as an ONNX graph (a window and class embeddings in, mask logits out).

The graph is described in `inference.onnx_export`. After writing it, the command runs it in ONNX Runtime on a random
window and random class embeddings and prints the largest difference from PyTorch's logits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..factory import WEIGHTS_HELP, load_checkpoint
from ..inference.onnx_export import (
    EXPORT_PACKAGES,
    export_onnx,
    missing_packages,
    onnx_runtime_logits,
    onnx_runtime_session,
    require_packages,
)
from ..outputs import check_output_file
from ..utils import UserError

HELP = "export the model to ONNX: image windows and class embeddings in, mask logits out (needs the export extra)"
PARITY_TOLERANCE = 1e-4  # fp32 float rounding of another runtime's kernels; a change of function is far larger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="an authors' .pth (a pickle: trusted files only) or .safetensors"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".onnx":
        raise UserError(f"output {args.output} must end in .onnx")
    check_output_file(args.output, "output", overwrite=args.overwrite)
    if not args.checkpoint.is_file():
        raise UserError(f"checkpoint {args.checkpoint} not found. {WEIGHTS_HELP}")
    require_packages(EXPORT_PACKAGES)
    model, _, _ = load_checkpoint(args.checkpoint, with_text_encoder=False)
    window, dim = model.cfg.image_encoder.image_size, model.cfg.head.dim
    print(f"exporting {args.checkpoint} (windows of {window}x{window}, {dim}-d class embeddings) ...", flush=True)
    export_onnx(model, args.output)
    print(f"wrote {args.output}")
    if missing_packages(("onnxruntime",)):
        print("onnxruntime is not installed: the graph was not checked against PyTorch")
        return 0
    images = torch.randn(1, 3, window, window)
    text = torch.nn.functional.normalize(torch.randn(5, dim), dim=-1)
    with torch.no_grad():
        expected = model.eval()(images, text)
    difference = (onnx_runtime_logits(onnx_runtime_session(args.output), images, text) - expected).abs().max().item()
    print(f"ONNX Runtime vs PyTorch on a random window, 5 classes: largest logit difference {difference:.2e}")
    if difference > PARITY_TOLERANCE:
        print(f"error: the difference exceeds {PARITY_TOLERANCE:.0e}; the graph does not compute the model's function")
        return 1
    return 0
