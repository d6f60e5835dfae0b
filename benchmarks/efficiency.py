"""Efficiency benchmark of one machine, in one run; regenerates benchmarks/RESULTS.md.

Measures, for a whole-image forward of batch 1 (default 512x512, the COCO configuration: T = 50, 171 classes):
  (a) the bare CLIP ViT-B/16 image encoder (open_clip's VisionTransformer, random weights, full size);
  (b) the full Cascade-CLIP forward, fast path, fp32;
  (c) the same in bf16, the image encoder's weights stored in bf16 (the bare encoder too, for its own ratio);
  (d) the machine's matrix-multiply peak (fp32 and bf16; the best of PyTorch's BLAS and oneDNN on square matrices);
and reports b/a, c/b, the achieved GFLOP/s as a share of (d), the reference computation in plain PyTorch, peak
memory against weights + live activations, bf16 agreement with fp32, and FPS under the paper's protocol (with fewer
images than its 1000, see --fps-images).

    PYTHONPATH=src python benchmarks/efficiency.py --threads 2 --note "machine shared with ..."
    PYTHONPATH=src python benchmarks/efficiency.py --size 224 --repeats 1 --fps-images 3 --fps-warmup 1 --out /tmp/R.md

Both the bare encoder and our model run in the same context per precision (`inference.fast_path.fast_inference`),
and the bare encoder's blocks run through our block code (`block_forward`), so the ratios compare
work, not kernels; open_clip's own forward of the bare encoder is timed too. Targets (issue 6) are stated beside each
figure; nothing is tuned to them.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import time
import warnings
from importlib.resources import files
from pathlib import Path

# As `cascade-clip` does (see cli/main.py); PyTorch reads it once, when it loads, so before the imports below.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer
from PIL import Image

from cascadeclip.config.presets import get_preset
from cascadeclip.data.transforms import test_image_tensor
from cascadeclip.inference.fast_path import (
    fast_cpu_kernels,
    fast_inference,
    keep_freed_memory,
)
from cascadeclip.modeling.cascade_clip import CascadeCLIP, upsample
from cascadeclip.modeling.image_encoder import block_forward
from cascadeclip.profiling.flops import count_flops
from cascadeclip.profiling.fps import generated_image_size, protocol_fps, protocol_images, slide_predictor
from cascadeclip.profiling.machine import machine_description
from cascadeclip.profiling.memory import ActivationTracker, peak_memory, tensor_bytes
from cascadeclip.profiling.parameters import count_parameters
from cascadeclip.profiling.timing import Timing, time_calls

CPU = torch.device("cpu")


def bare_vit(size: int) -> VisionTransformer:
    """CLIP ViT-B/16 as open_clip builds it (QuickGELU, as OpenAI's), random weights, for size x size inputs."""
    return VisionTransformer(
        image_size=size,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        mlp_ratio=4.0,
        output_dim=512,
        act_layer=QuickGELU,
    ).eval()


def bare_vit_forward(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """open_clip's VisionTransformer forward (CLS embedding out) with its blocks run by our encoder's block code."""
    x = vit.conv1(images).flatten(2).transpose(1, 2)
    cls = vit.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = vit.ln_pre(torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype))
    for block in vit.transformer.resblocks:
        x = block_forward(block, x)
    return vit.ln_post(x[:, 0]) @ vit.proj


def forward_with_bf16_head(model: CascadeCLIP, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The fast path's forward, except that under bf16 autocast the head runs in bf16 too (the fast path keeps it in
    fp32); timed and compared to show the trade-off."""
    maps, global_embedding = model.backbone(images)
    logits = model.decode_head(maps, global_embedding, text).contiguous(memory_format=torch.channels_last)
    return upsample(logits, images.shape[-2:])


def interleaved_timings(calls: dict[str, tuple], repeats: int, warmup: int) -> dict[str, Timing]:
    """Seconds per call of each (forward, precision), timed in turns: every round calls each forward once, so that a
    machine whose speed drifts during the run (a shared host) slows every row alike. Precision None: plain PyTorch
    inference (its own MKL linears and MHA fast path), outside the fast-path context."""
    seconds = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, (forward, precision) in calls.items():
            with torch.inference_mode() if precision is None else fast_inference(CPU, precision):
                start = time.perf_counter()
                forward()
                elapsed = time.perf_counter() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return {name: Timing.of(times) for name, times in seconds.items()}


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> dict:
    """GFLOP/s of an n x n x n product: PyTorch's matmul (MKL for fp32 on the CPU) and oneDNN's linear kernel."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    flops = 2 * n**3
    with torch.inference_mode():
        results = {"torch.mm": flops / time_calls(lambda: a @ b, CPU, repeats, warmup=1).min / 1e9}
        if dtype == torch.float32:
            with fast_cpu_kernels():
                results["oneDNN linear"] = flops / time_calls(lambda: F.linear(a, b), CPU, repeats, warmup=1).min / 1e9
    return results


def sample_window(size: int) -> torch.Tensor:
    """(1, 3, size, size) the bundled sample photo, short side resized to `size`, centre crop, normalised."""
    image = Image.open(files("cascadeclip") / "assets" / "sample.jpg").convert("RGB")
    tensor = test_image_tensor(image, size)
    top, left = (tensor.shape[2] - size) // 2, (tensor.shape[3] - size) // 2
    return tensor[:, :, top : top + size, left : left + size]


def measure_memory(model: CascadeCLIP, images: torch.Tensor, text: torch.Tensor) -> dict:
    """Peak resident growth of one fast fp32 forward, against the tensors the forward itself keeps alive."""
    with fast_inference(CPU, "fp32"):
        measured = peak_memory(lambda: model(images, text), CPU)
        with ActivationTracker(exclude=list(model.parameters())) as tracker:
            model(images, text)
    weights = tensor_bytes(model.parameters())
    return {
        "weights_bytes": weights,
        "forward_growth_bytes": measured["peak_bytes"],
        "method": measured["method"],
        "live_activations_peak_bytes": tracker.peak,
        "largest_op_bytes": tracker.largest_op,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="coco-inductive", help="preset (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="side of the whole-image forward (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards before them (default: %(default)s)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak product (default: %(default)s)")
    parser.add_argument(
        "--fps-images", type=int, default=30, help="FPS images, warm-up included (default: %(default)s)"
    )
    parser.add_argument("--fps-warmup", type=int, default=5, help="FPS warm-up images (default: %(default)s)")
    parser.add_argument("--note", default="", help="a remark for the results file, e.g. that the machine was shared")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    started, load_before = time.time(), machine_description()["load_average"]
    freed_memory_kept = keep_freed_memory()  # as `cascade-clip` does for its own process

    cfg = get_preset(args.config)
    torch.manual_seed(0)
    model = CascadeCLIP(cfg.model).eval().requires_grad_(False)
    vit = bare_vit(args.size).requires_grad_(False)
    text = F.normalize(torch.randn(len(cfg.classes.names), cfg.model.head.dim), dim=-1)
    images = sample_window(args.size)

    flops = {"bare ViT-B/16": count_flops(vit, images)}
    with torch.no_grad():  # the same function, our block code
        torch.testing.assert_close(bare_vit_forward(vit, images), vit(images), atol=1e-4, rtol=1e-4)
    flops["Cascade-CLIP reference"] = count_flops(model.set_fast_path(False), images, text)
    flops["Cascade-CLIP fast"] = count_flops(model.set_fast_path(True), images, text)

    reference = copy.deepcopy(model).set_fast_path(False)
    model16, vit16 = copy.deepcopy(model).store_encoder_in_bf16(), copy.deepcopy(vit).to(torch.bfloat16)
    bare, fast = "bare ViT-B/16", "Cascade-CLIP fast"
    calls = {  # row: (FLOPs of, forward, precision of the fast-path context or None for plain PyTorch)
        "(a) bare ViT-B/16, fp32": (bare, lambda: bare_vit_forward(vit, images), "fp32"),
        "(b) Cascade-CLIP fast path, fp32": (fast, lambda: model(images, text), "fp32"),
        "bare ViT-B/16, bf16": (bare, lambda: bare_vit_forward(vit16, images), "bf16"),
        "(c) Cascade-CLIP fast path, bf16": (fast, lambda: model16(images, text), "bf16"),
        "Cascade-CLIP fast path, head in bf16 too, bf16": (
            fast,
            lambda: forward_with_bf16_head(model16, images, text),
            "bf16",
        ),
        "bare ViT-B/16, open_clip's forward, fp32": (bare, lambda: vit(images), "fp32"),
        "bare ViT-B/16, open_clip's forward, bf16": (bare, lambda: vit16(images), "bf16"),
        "Cascade-CLIP reference, plain PyTorch fp32": ("Cascade-CLIP reference", lambda: reference(images, text), None),
        "bare ViT-B/16, plain PyTorch fp32": (bare, lambda: vit(images), None),
    }
    print("timing ...", flush=True)
    # The rows of the targets take turns among themselves, then the others: a forward run between them changes
    # the process's memory state (which blocks are free, whether huge pages are at hand), and a user's process
    # runs one model.
    groups = [[name for name in calls if name[0] == "(" or name == "bare ViT-B/16, bf16"]]
    groups.append([name for name in calls if name not in groups[0]])
    timings = {}
    for group in groups:
        timings |= interleaved_timings({name: calls[name][1:] for name in group}, args.repeats, args.warmup)
    rows = {name: (calls[name][0], timing) for name, timing in timings.items()}

    print("matmul peak ...", flush=True)
    peak = {
        "fp32": matmul_peak(torch.float32, args.matmul_size, args.repeats),
        "bf16": matmul_peak(torch.bfloat16, args.matmul_size, args.repeats),
    }

    print("agreement, memory, FPS ...", flush=True)
    window_size = tuple(images.shape[-2:])
    with fast_inference(CPU, "fp32"):
        labels_fp32 = slide_predictor(model, text, cfg)(images, window_size).argmax(dim=1)
        logits_fp32 = model(images, text).argmax(dim=1)
    with fast_inference(CPU, "bf16"):
        labels_bf16 = slide_predictor(model16, text, cfg)(images, window_size).argmax(dim=1)
        logits_bf16 = {
            "fast path": model16(images, text),
            "head in bf16 too": forward_with_bf16_head(model16, images, text),
        }
        logits_agreement = {
            name: (x.argmax(dim=1) == logits_fp32).float().mean().item() for name, x in logits_bf16.items()
        }
    agreement = (labels_fp32 == labels_bf16).float().mean().item()
    memory = measure_memory(model, images, text)
    fps = measure_fps(args, cfg, {"fp32": model, "bf16": model16}, text)

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(time.time() - started),
        "machine": machine_description(),
        "load_average_before": load_before,
        "allocator": {
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "keep_freed_memory": freed_memory_kept,
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "config": cfg.name,
        "classes": len(text),
        "parameters": {"Cascade-CLIP": count_parameters(model).total, "bare ViT-B/16": count_parameters(vit).total},
        "flops": flops,
        "timings": {name: {"flops_of": of, **t.as_dict()} for name, (of, t) in rows.items()},
        "matmul_peak_gflops": peak,
        "bf16_same_class_share": agreement,
        "bf16_same_logit_argmax_share": logits_agreement,
        "memory": memory,
        "fps": fps,
    }
    markdown = render(results)
    args.out.write_text(markdown)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(markdown)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def measure_fps(args: argparse.Namespace, cfg, models: dict[str, CascadeCLIP], text: torch.Tensor) -> dict:
    """FPS under the paper's protocol on a generated image of the dataset's most common size, per precision."""
    result = {"image_size": list(generated_image_size(cfg))}
    for precision, model in models.items():
        with fast_inference(CPU, precision):
            stream = protocol_images(cfg, args.fps_images)
            result[precision] = protocol_fps(slide_predictor(model, text, cfg), stream, CPU, warmup=args.fps_warmup)
    return result


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(r: dict) -> str:
    m, t, flops, peak, mem = r["machine"], r["timings"], r["flops"], r["matmul_peak_gflops"], r["memory"]
    median = {name: row["median"] for name, row in t.items()}
    a, b = median["(a) bare ViT-B/16, fp32"], median["(b) Cascade-CLIP fast path, fp32"]
    a16, c = median["bare ViT-B/16, bf16"], median["(c) Cascade-CLIP fast path, bf16"]
    open_clip_fp32 = median["bare ViT-B/16, open_clip's forward, fp32"]
    fp32_peak, bf16_peak = max(peak["fp32"].values()), max(peak["bf16"].values())
    achieved = flops["Cascade-CLIP fast"] / b / 1e9
    achieved16 = flops["Cascade-CLIP fast"] / c / 1e9
    total_memory = mem["weights_bytes"] + (mem["forward_growth_bytes"] or 0)
    bound = mem["weights_bytes"] + mem["live_activations_peak_bytes"]
    flags = ", ".join(f for f, present in m["cpu_flags"].items() if present)
    size = r["args"]["size"]
    lines = [
        "# Efficiency benchmark",
        "",
        f"Regenerated by `benchmarks/efficiency.py` on {r['date']} ({r['wall_seconds']} s). "
        f"Configuration `{r['config']}` ({r['classes']} classes), whole-image forward of batch 1 at {size}x{size}, "
        f"random weights. {r['args']['repeats']} timed forwards per row after {r['args']['warmup']} untimed; the rows "
        "(a), (b), bare bf16 and (c) take turns (one forward of each per round), then the other rows.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs; PyTorch used {m['torch_threads']} threads",
        f"- instruction sets: {flags}; PyTorch CPU capability {m['torch_cpu_capability']}; "
        f"bf16 instructions: {'yes' if m['cpu_flags'].get('avx512_bf16') or m['cpu_flags'].get('amx_bf16') else 'no'}",
        f"- memory {m.get('memory_gb')} GB; GPU: {m['gpu'] or 'none'}",
        f"- torch {m['torch']}, Python {m['python']}",
        f"- memory allocation: THP_MEM_ALLOC_ENABLE={r['allocator']['THP_MEM_ALLOC_ENABLE']}, glibc keeps freed "
        f"memory: {r['allocator']['keep_freed_memory']} (see `inference.fast_path.keep_freed_memory`)",
        f"- load average before / after: {r['load_average_before']} / {m.get('load_average')}",
    ]
    if r["args"]["note"]:
        lines.append(f"- note: {r['args']['note']}")
    lines += [
        "",
        "## Forward timings",
        "",
        "| forward | median ms | p25-p75 ms | GFLOP (PyTorch, 2/MAC) | achieved GFLOP/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in t.items():
        gflop = flops[row["flops_of"]] / 1e9
        lines.append(
            f"| {name} | {row['median'] * 1e3:.0f} | {row['p25'] * 1e3:.0f}-{row['p75'] * 1e3:.0f} | "
            f"{gflop:.1f} | {gflop / row['median']:.0f} |"
        )
    lines += [
        "",
        "FLOPs by `torch.utils.flop_counter` (matrix products, convolutions, attention; 2 per multiply-add). "
        "The paper's fvcore convention is half: "
        + ", ".join(f"{name} {f / 2e9:.1f} G" for name, f in flops.items())
        + ".",
        "",
        "(d) matrix-multiply peak, {0}x{0}x{0}: ".format(r["args"]["matmul_size"])
        + "; ".join(f"{dt} " + ", ".join(f"{k} {v:.0f}" for k, v in peak[dt].items()) + " GFLOP/s" for dt in peak),
        "",
        "## Against the targets",
        "",
        "| measure | value | target | |",
        "|---|---:|---:|---|",
        f"| b/a: full model / bare encoder, fp32 | {b / a:.3f} | <= 1.15 | {_verdict(b / a <= 1.15)} |",
        f"| same in bf16 | {c / a16:.3f} | <= 1.15 | {_verdict(c / a16 <= 1.15)} |",
        f"| c/b: bf16 / fp32 time | {c / b:.3f} (speed-up {b / c:.2f}x) | speed-up >= 2 | {_verdict(b / c >= 2)} |",
        f"| pixels with the same class, bf16 vs fp32 | {100 * r['bf16_same_class_share']:.2f}% | >= 99.5% | "
        f"{_verdict(r['bf16_same_class_share'] >= 0.995)} |",
        f"| achieved fp32 GFLOP/s / fp32 peak | {achieved:.0f} / {fp32_peak:.0f} = {100 * achieved / fp32_peak:.0f}% "
        f"| >= 70% | {_verdict(achieved >= 0.7 * fp32_peak)} |",
        f"| achieved bf16 GFLOP/s / bf16 peak (no target) | {achieved16:.0f} / {bf16_peak:.0f} = "
        f"{100 * achieved16 / bf16_peak:.0f}% | | |",
        f"| peak memory / (weights + live activations) | {total_memory / 2**20:.0f} / {bound / 2**20:.0f} MB = "
        f"{total_memory / bound:.2f} | <= 1.2 | {_verdict(total_memory <= 1.2 * bound)} |",
        "",
        f"Speed-up of the fast path over the reference computation in plain PyTorch (fp32): "
        f"{median['Cascade-CLIP reference, plain PyTorch fp32'] / b:.2f}x; "
        f"bare encoder, open_clip's forward in plain PyTorch vs in the fast context: "
        f"{median['bare ViT-B/16, plain PyTorch fp32'] / open_clip_fp32:.2f}x.",
        "",
        "### What bounds the ratios",
        "",
        f"- b/a: the fast path does {flops['Cascade-CLIP fast'] / flops['bare ViT-B/16']:.3f}x the bare encoder's "
        "FLOPs (the deep prompts as keys, the taps' projections and the three decoders), so at equal efficiency b/a "
        "cannot fall below that; the upsampling of every class's logits to full resolution adds memory traffic on "
        "top. In bf16 the head runs in fp32 (see the agreement below), which weighs more against a bf16 encoder.",
        f"- c/b: the bf16 / fp32 matrix-multiply peaks of this machine are {bf16_peak:.0f} / {fp32_peak:.0f} = "
        f"{bf16_peak / fp32_peak:.2f}x; a forward made of matrix products cannot gain more from bf16.",
        "- bf16 agreement, argmax of the whole-window logits against fp32: "
        + ", ".join(f"{name} {100 * share:.2f}%" for name, share in r["bf16_same_logit_argmax_share"].items())
        + ". Random weights give logits of small spread between classes, hence near-ties, which the head in bf16 "
        "flips more often; the two bf16 rows above show what it would change in time.",
        "",
        "## Memory",
        "",
        f"Weights {mem['weights_bytes'] / 2**20:.0f} MB. One fp32 fast-path forward raised the peak resident set by "
        f"{(mem['forward_growth_bytes'] or 0) / 2**20:.0f} MB ({mem['method']}). The tensors the forward creates "
        f"peaked at {mem['live_activations_peak_bytes'] / 2**20:.0f} MB live at once (tracked per operation); the "
        f"largest single operation touched {mem['largest_op_bytes'] / 2**20:.0f} MB.",
        "",
        "## FPS (the paper's protocol, fewer images)",
        "",
    ]
    fps = r["fps"]
    h, w = fps["image_size"]
    for precision in ("fp32", "bf16"):
        f = fps[precision]
        lines.append(f"- {precision}: {f['fps']:.3f} FPS over {f['images']} timed images after {f['warmup']} warm-up")
    lines += [
        "",
        f"Batch 1, sliding 512 windows (stride 426) over a generated {h}x{w} image resized to short side 512, "
        "resize to the original size, argmax and copy timed. The paper times 900 images after 100 warm-up on an "
        f"RTX 3090 (18.4 FPS); here {r['args']['fps_images']} images in all, to keep the shared machine's time.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
