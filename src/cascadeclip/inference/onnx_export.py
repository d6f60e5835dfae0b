"""ONNX export: the segmentation model as a graph that ONNX Runtime (or any ONNX runtime) can run without PyTorch.

The graph takes what one sliding window needs and returns its mask logits:
- `images` (B, 3, S, S) float32: windows of the model's size S (or the size exported for), normalised with CLIP's
  mean and std (`data.transforms`);
- `text` (C, D) float32: unit-norm class embeddings (`inference.text_embeddings`);
- `logits` (B, C, S, S) float32: the model's mask logits; `inference.predict` turns them into scores.
B and C are free. The graph is the fast path's computation in fp32 (`CascadeCLIP.set_fast_path`), which is the
reference's function. Needs the `export` extra: `pip install 'cascadeclip[export]'` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from ..modeling.cascade_clip import CascadeCLIP
from ..utils import UserError, atomic_write

EXPORT_PACKAGES = ("onnx", "onnxscript")
INPUT_NAMES, OUTPUT_NAMES = ["images", "text"], ["logits"]


def missing_packages(names: tuple[str, ...] = (*EXPORT_PACKAGES, "onnxruntime")) -> list[str]:
    """Which of the packages are not installed."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_packages(names: tuple[str, ...]) -> None:
    """UserError naming the packages that are missing and how to install them."""
    missing = missing_packages(names)
    if missing:
        raise UserError(
            f"ONNX export needs {', '.join(missing)}, which are not installed: pip install 'cascadeclip[export]'"
        )


def export_onnx(model: CascadeCLIP, path: str | Path, window: int | None = None) -> None:
    """Write `model` as an ONNX graph for windows of `window` (default: the model's image size) to `path`
    (atomically); the model itself is left as it was."""
    require_packages(EXPORT_PACKAGES)
    window = window or model.cfg.image_encoder.image_size
    graph_model = copy.deepcopy(model).float().eval().set_fast_path(True)
    # Example inputs of two windows and three classes: sizes of 1 would be taken for constants.
    images = torch.zeros(2, 3, window, window)
    text = torch.nn.functional.normalize(torch.ones(3, model.cfg.head.dim), dim=-1)
    free = {"images": {0: torch.export.Dim("windows")}, "text": {0: torch.export.Dim("classes")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            graph_model,
            (images, text),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=free,
            dynamo=True,
            verbose=False,
        )
    atomic_write(Path(path), lambda tmp: program.save(str(tmp)))


def onnx_runtime_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime session of an exported graph on the CPU, with `threads` threads (default: PyTorch's count)."""
    require_packages(("onnxruntime",))
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores free
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runtime_logits(session, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) logits of the exported graph for (B, 3, S, S) windows and (C, D) class embeddings."""
    feeds = {"images": images.float().cpu().numpy(), "text": text.float().cpu().numpy()}
    return torch.from_numpy(np.asarray(session.run(OUTPUT_NAMES, feeds)[0]))
