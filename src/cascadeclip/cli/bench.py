"""`cascade-clip bench CONFIG`: parameters, FLOPs, latency, FPS and peak memory, measured as the paper measures them.

- Parameters: this implementation's counts, with the frozen text tower, and the authors' accounting (text tower
  and the unused decoder self-attention included: the paper's 193.1 M / 40.5 M for COCO).
- FLOPs: one whole-image forward at the training crop size (512²), all classes as queries, text tower not run; of
  the reference computation (what the paper counted) and of the fast path.
- Latency and peak memory: that same forward, per device and precision.
- FPS: the authors' get_fps.py protocol (docs/method.md, Measuring efficiency): batch 1, sliding windows, resize
  to the original size, argmax and copy to the CPU timed; the first images are warm-up, FPS = timed images / their
  summed time. On the validation images when a data root is given, else on generated images of the dataset's most
  common size.

Latency, memory and FPS use the fast path (`inference.fast_path`; in bf16 with the image encoder's weights stored in
bf16) unless --reference is given. Weights are random and class embeddings random unit vectors: neither changes the
amount of work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import warnings

import torch

from ..config import Config, TextEncoderConfig
from ..config.presets import resolve_config
from ..inference.fast_path import PRECISIONS, fast_inference
from ..modeling.cascade_clip import CascadeCLIP
from ..outputs import check_output_file
from ..profiling.flops import count_flops
from ..profiling.fps import generated_image_size, protocol_fps, protocol_images, slide_predictor
from ..profiling.machine import machine_description
from ..profiling.memory import peak_memory, tensor_bytes
from ..profiling.parameters import ParameterCounts, authors_parameter_counts, count_parameters
from ..profiling.timing import time_calls
from ..utils import UserError, atomic_write
from .options import non_negative_int, positive_int

HELP = "measure parameters, FLOPs, latency, FPS (the paper's protocol) and peak memory of a configuration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a preset name (e.g. coco-inductive) or a YAML configuration file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="configuration overrides, e.g. test.stride=341 model.image_encoder.width=64",
    )
    parser.add_argument("--device", nargs="+", choices=("cpu", "cuda"), help="default: cpu, and cuda when present")
    parser.add_argument("--precision", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument(
        "--size", type=positive_int, help="side of the whole-image forward (default: model.image_encoder.image_size)"
    )
    parser.add_argument("--data-root", help="dataset root: FPS on its validation images (default: generated images)")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="size of the generated images (default: the dataset's most common size)",
    )
    parser.add_argument(
        "--images", type=positive_int, default=1000, help="images run for FPS, warm-up included (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=100, help="first FPS images not timed (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=20, help="timed forwards for the latency (default: %(default)s)"
    )
    parser.add_argument(
        "--latency-warmup", type=non_negative_int, default=3, help="untimed forwards before them (default: %(default)s)"
    )
    parser.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    parser.add_argument("--reference", action="store_true", help="time the reference computation, not the fast path")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--json", dest="json_file", help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")


def run(args: argparse.Namespace) -> int:
    if args.images <= args.warmup:
        raise UserError(f"--images ({args.images}) must exceed --warmup ({args.warmup})")
    if args.json_file:
        check_output_file(args.json_file, "--json", {"the configuration file": args.config}, args.overwrite)
    cfg = resolve_config(args.config, args.overrides)
    if not cfg.classes.names:
        raise UserError(f"configuration {args.config!r} has no classes (classes.names); FLOPs depend on their number")
    size = cfg.model.image_encoder.image_size if args.size is None else args.size
    if size % cfg.model.image_encoder.patch_size:
        raise UserError(f"--size {size} must be a multiple of the patch size {cfg.model.image_encoder.patch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in (args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device")

    torch.manual_seed(0)
    model = CascadeCLIP(cfg.model).eval()
    text = torch.nn.functional.normalize(torch.randn(len(cfg.classes.names), cfg.model.head.dim), dim=-1)
    results = {
        "config": cfg.name,
        "machine": machine_description(),
        "settings": settings_report(args, cfg, size),
        "parameters": parameter_report(cfg, model),
        "flops": flops_report(model, text, size),
        "runs": [],
    }
    model.set_fast_path(not args.reference)
    for device in devices:
        for precision in args.precision:
            if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
                print(f"skipping bf16 on {torch.cuda.get_device_name(device)}: not supported")
                continue
            print(f"measuring {device.type} {precision} ...", flush=True)
            results["runs"].append(measure(args, cfg, model, text, size, device, precision))
    print(format_report(results))
    if args.json_file:
        atomic_write(args.json_file, lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
        print(f"wrote {args.json_file}")
    return 0


def parameter_report(cfg: Config, model: CascadeCLIP) -> dict:
    """Counts of the model as built for inference, with the frozen text tower, and as the authors count."""
    text_cfg = cfg.model.text_encoder or TextEncoderConfig(output_dim=cfg.model.head.dim)
    with torch.device("meta"):
        with_text = CascadeCLIP(dataclasses.replace(cfg.model, text_encoder=text_cfg))
    return {
        "model": _counts(count_parameters(model)),
        "with_text_tower": _counts(count_parameters(with_text)),
        "authors": _counts(authors_parameter_counts(with_text)),
    }


def _counts(counts: ParameterCounts) -> dict:
    return {"total": counts.total, "trainable": counts.trainable}


def flops_report(model: CascadeCLIP, text: torch.Tensor, size: int) -> dict:
    """FLOPs of one whole-image forward on the CPU, reference computation and fast path, in both conventions."""
    images = torch.randn(1, 3, size, size)
    report = {"image_size": size, "classes": len(text)}
    for path, fast in (("reference", False), ("fast", True)):
        flops = count_flops(model.set_fast_path(fast), images, text)
        report[path] = {"fvcore": flops // 2, "pytorch": flops}  # fvcore: 1 per multiply-add; PyTorch: 2
    model.set_fast_path(False)
    return report


def settings_report(args: argparse.Namespace, cfg: Config, size: int) -> dict:
    generated = generated_image_size(cfg, args.image_size)
    source = "validation images" if args.data_root else "generated images of {}x{}".format(*generated)
    return {
        "path": "reference" if args.reference else "fast",
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "forward_size": size,
        "latency_repeats": args.repeats,
        "latency_warmup": args.latency_warmup,
        "fps_images": args.images,
        "fps_warmup": args.warmup,
        "fps_source": source,
        "test": dataclasses.asdict(cfg.test),
        "weights": "random",
        "class_embeddings": "random unit vectors",
    }


def measure(
    args: argparse.Namespace,
    cfg: Config,
    model: CascadeCLIP,
    text: torch.Tensor,
    size: int,
    device: torch.device,
    precision: str,
) -> dict:
    """Latency and peak memory of one whole-image forward, and FPS under the paper's protocol."""
    if precision == "bf16" and not args.reference:  # a copy: the next runs need the fp32 weights
        model = copy.deepcopy(model).store_encoder_in_bf16()
    model.to(device)
    text = text.to(device)
    forward_model = torch.compile(model) if args.compile else model
    images = torch.randn(1, 3, size, size, device=device)
    predict = slide_predictor(forward_model, text, cfg)
    stream = protocol_images(cfg, args.images, args.data_root, args.image_size)

    with fast_inference(device, precision), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # open_clip / MHA notes about the attention path
        latency = time_calls(lambda: forward_model(images, text), device, args.repeats, args.latency_warmup)
        memory = peak_memory(lambda: forward_model(images, text), device)
        fps = protocol_fps(predict, stream, device, warmup=args.warmup)
    weights = tensor_bytes(model.parameters())
    model.cpu()
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else machine_description()["cpu"],
        "precision": precision,
        "latency_seconds": latency.as_dict(),
        "memory": {"weights_bytes": weights, **memory},
        "fps": fps,
    }


def format_report(results: dict) -> str:
    params, flops, settings = results["parameters"], results["flops"], results["settings"]
    lines = [
        f"configuration {results['config']}",
        "parameters (M)          total  trainable",
        *(
            f"  {name:<18} {c['total'] / 1e6:8.2f}  {c['trainable'] / 1e6:8.2f}"
            for name, c in (
                ("this model", params["model"]),
                ("with text tower", params["with_text_tower"]),
                ("as the authors", params["authors"]),
            )
        ),
        f"GFLOPs of one {flops['image_size']}x{flops['image_size']} forward, {flops['classes']} classes "
        "(fvcore: 1 per multiply-add / PyTorch: 2):",
        *(
            f"  {path:<18} {flops[path]['fvcore'] / 1e9:8.2f}  {flops[path]['pytorch'] / 1e9:8.2f}"
            for path in ("reference", "fast")
        ),
        "",
        f"{settings['path']} path, {settings['threads']} threads",
        "device  precision  latency ms: median [p25-p75] (min-max)   peak MB (+ weights MB)     FPS",
    ]
    for r in results["runs"]:
        t, m, fps = r["latency_seconds"], r["memory"], r["fps"]
        peak = f"{m['peak_bytes'] / 2**20:8.0f}" if m["peak_bytes"] is not None else "       -"
        lines.append(
            f"{r['device']:<7} {r['precision']:<9}  {t['median'] * 1e3:9.1f} "
            f"[{t['p25'] * 1e3:.1f}-{t['p75'] * 1e3:.1f}] ({t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f})".ljust(60)
            + f"{peak} (+{m['weights_bytes'] / 2**20:.0f})".ljust(24)
            + (f"{fps['fps']:8.2f}" if fps["fps"] else "       -")
        )
    lines.append(f"FPS: {settings['fps_source']}, {settings['fps_warmup']} warm-up images of {settings['fps_images']}")
    lines.append(f"peak memory: {results['runs'][0]['memory']['method']}" if results["runs"] else "")
    return "\n".join(lines)
