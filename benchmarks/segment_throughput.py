"""Segmenting at scale, on one machine in one run; writes benchmarks/SEGMENT_THROUGHPUT.md.

Measures, with a ViT-B/16-sized model of random weights (the work of a real checkpoint, with meaningless labels):
  1. `cascade-clip segment` over a folder of generated images: images per second with the images decoded and resized
     in the main process (--workers 0), in DataLoader workers (--workers 1 and 2), and split over two processes by
     torchrun (one thread each). The command reports its own rate: images over the time of its loop of reading,
     model and writing (loading the model and the checks before excluded; summed over processes).
  2. The cost of a new list of names on an image already encoded (`Segmenter.set_image`, then `predict(names)`)
     against a full prediction of the same image and names: with the names' embeddings cached, and with new names
     (the text tower runs for them either way). Target: at most 0.3x.

Timings mean something only on a quiet machine: the script refuses to start while the 1-minute load average is above
--max-load (default 0.5), unless --force. The record (writes benchmarks/SEGMENT_THROUGHPUT.md):

    .venv/bin/python benchmarks/segment_throughput.py

`--quick` is a smoke test of the script, not a measurement (tests/test_segment_scale.py runs it): two small images,
the whole image at a 224-pixel short side, one template, two of the runs, one round; it writes a file only to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cascadeclip import Segmenter
from cascadeclip.config.dataset_file import load_dataset
from cascadeclip.outputs import check_output_file
from cascadeclip.profiling.machine import machine_description
from cascadeclip.utils import UserError, atomic_write

RATE = re.compile(r"([\d.]+) images/s")


def generated_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """`count` JPEG photos-to-be of `size` (W, H): a colour gradient with random ellipses and rectangles."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(0, 256, 3) + rng.integers(0, 128, 3)
        picture = Image.fromarray(np.broadcast_to(ramp, (height, width, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(12):
            x, y = rng.integers(0, width), rng.integers(0, height)
            box = [x, y, x + rng.integers(20, width // 2), y + rng.integers(20, height // 2)]
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        picture.save(folder / f"image_{i:04d}.jpg", quality=90)


QUICK_SETTINGS = {"mode": "whole", "short_side": 224, "templates": "single"}  # --quick: a smoke test, fast


def segment_rate(folder: Path, out: Path, workers: int, processes: int, names: str, quick: bool) -> float:
    """Images per second that `cascade-clip segment` reports for the folder (a fresh output folder each time)."""
    command = ["-m", "cascadeclip", "segment", str(folder), "--classes", names, "--random-weights"]
    command += ["--device", "cpu", "--workers", str(workers), "--out", str(out)]
    if quick:
        command += ["--mode", "whole", "--short-side", str(QUICK_SETTINGS["short_side"]), "--single-template"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
    # The class names' embeddings cached beside the outputs, not in the user's cache.
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "CASCADECLIP_CACHE": str(out.parent / "cache")}
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"segment failed:\n{done.stderr[-3000:]}")
    rates = RATE.findall(done.stdout)
    if not rates:
        raise SystemExit(f"segment printed no rate:\n{done.stdout[-2000:]}")
    return float(rates[-1])


def names_cost(segmenter: Segmenter, image: Image.Image, names: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of each way to segment `image` into `names`, one of each per round, rounds taking turns:

    full_cached: `predict(image, names)`, the names' embeddings cached; cached: `predict(names)` on the encoded image;
    full_new / new: the same two with names never seen before (the text tower embeds them); text: the text tower
    alone on new names.
    """
    ways = {
        "full_cached": lambda _: segmenter.predict(image, names, scores=False),
        "cached": lambda _: segmenter.predict(names, scores=False),
        "full_new": lambda new_names: segmenter.predict(image, new_names, scores=False),
        "new": lambda new_names: segmenter.predict(new_names, scores=False),  # predict(image, ...) kept the encoding
        "text": segmenter.class_embeddings,
    }
    times = {key: [] for key in ways}
    segmenter.set_image(image)
    segmenter.predict(names, scores=False)  # warm-up; the names' embeddings are cached from here on
    for round_ in range(repeats):
        for key, way in ways.items():
            new_names = [f"{name} {key} {round_}" for name in names]  # words never seen: not in the cache
            start = time.perf_counter()
            way(new_names)
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="generated images (default: 24; 2 with --quick)")
    parser.add_argument("--repeats", type=int, help="rounds of the names timing (default: 5; 1 with --quick)")
    parser.add_argument("--max-load", type=float, default=0.5, help="refuse above this 1-minute load average")
    parser.add_argument("--force", action="store_true", help="measure whatever the load")
    parser.add_argument("--quick", action="store_true", help="a smoke test of this script (no load check, no record)")
    parser.add_argument(
        "--out", type=Path, help="results file (default: benchmarks/SEGMENT_THROUGHPUT.md; none with --quick)"
    )
    args = parser.parse_args()
    args.images = args.images or (2 if args.quick else 24)
    args.repeats = args.repeats or (1 if args.quick else 5)
    if args.out is None and not args.quick:
        args.out = Path(__file__).with_name("SEGMENT_THROUGHPUT.md")
    if args.out is not None:  # before the measurements, not after them
        try:
            args.out = check_output_file(args.out, "--out")
        except UserError as err:
            raise SystemExit(f"segment_throughput: error: {err}") from None
    load_before = os.getloadavg()
    if load_before[0] > args.max_load and not (args.force or args.quick):
        raise SystemExit(f"1-minute load average {load_before[0]:.2f} > {args.max_load}: timings would mean nothing")
    began = time.time()
    names = "cat, dog, person, car, tree, sky, road, grass, building, water"
    runs = [
        ("1 process, images read in the main process (--workers 0)", 0, 1),
        ("1 process, 1 DataLoader worker", 1, 1),
        ("1 process, 2 DataLoader workers", 2, 1),
        ("2 processes (torchrun, 1 thread each), 1 worker each", 1, 2),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        folder.mkdir()
        generated_images(folder, args.images, (640, 480))
        for label, workers, processes in [runs[0], runs[3]] if args.quick else runs:
            out = Path(work) / f"out_{workers}_{processes}"
            rate = segment_rate(folder, out, workers, processes, names, args.quick)
            rows.append((label, rate))
            print(f"{label}: {rate:.3f} images/s", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights
            options = QUICK_SETTINGS if args.quick else {}
            segmenter = Segmenter.with_random_weights(
                device="cpu", cache_dir=Path(work) / "cache", keep_freed_memory=True, **options
            )
        image = Image.open(Path(__file__).parents[1] / "src/cascadeclip/assets/sample.jpg")
        costs = {}
        name_lists = [names.split(", ")] + ([] if args.quick else [list(load_dataset("coco").classes.names)])
        for classes in name_lists:
            costs[len(classes)] = names_cost(segmenter, image, classes, args.repeats)
            print(f"{len(classes)} names: {costs[len(classes)]}", flush=True)
    if args.out is not None:
        write_results(args, rows, costs, image.size, load_before, time.time() - began)


def write_results(args, rows, costs, image_size, load_before, seconds) -> None:
    machine = machine_description()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Segmenting at scale",
        "",
        *(
            ["**QUICK SMOKE RUN (--quick): small settings on a busy machine; not a measurement.**", ""]
            if args.quick
            else []
        ),
        f"Regenerated by `benchmarks/segment_throughput.py` on {now} ({seconds:.0f} s). ViT-B/16-sized model with",
        "random weights (the work of a real checkpoint), sliding 512 windows, fp32, CPU.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs; torch {machine['torch']}",
        f"- load average before / after: {[round(x, 2) for x in load_before]} / {machine.get('load_average')}",
        "",
        f"## `cascade-clip segment` over {args.images} generated 640x480 JPEG images (10 names)",
        "",
        "Each image is 512x683 at the inference resolution: two 512x512 windows. The rate is the command's own: "
        "images over its loop of reading, model and writing (model loading excluded; summed over processes).",
        "",
        "| run | images/s |",
        "|---|---:|",
        *(f"| {label} | {rate:.3f} |" for label, rate in rows),
        "",
        f"## New names on an encoded image ({image_size[0]}x{image_size[1]} sample, two windows)",
        "",
        f"Median of {args.repeats} rounds, with freed memory kept for reuse as in the web page's process (the "
        "`cascade-clip` command's). Full: `predict(image, names)`; encoded image: `set_image(image)` "
        "before, then `predict(names)`. Cached names: their embeddings are in the cache; new names: never seen "
        "before, so the text tower embeds them (15 templates each) in either way; text tower: that embedding alone. "
        "Target: the encoded image at most 0.3x the full prediction of the same names.",
        "",
        "| names | cached: full s | cached: encoded image s | ratio | new: full s | new: encoded image s | ratio |"
        " new: text tower s | verdict (<= 0.3x) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for count, cost in costs.items():
        cached, new = cost["cached"] / cost["full_cached"], cost["new"] / cost["full_new"]
        verdicts = ("met" if ratio <= 0.3 else "**not met**" for ratio in (cached, new))
        lines.append(
            f"| {count} | {cost['full_cached']:.3f} | {cost['cached']:.3f} | {cached:.2f}x | {cost['full_new']:.3f} | "
            f"{cost['new']:.3f} | {new:.2f}x | {cost['text']:.3f} | "
            "cached names {}, new names {} |".format(*verdicts)
        )
    lines += [
        "",
        "With new names the text tower runs in both ways, and the encoded image saves only the image encoder: the "
        "ratio cannot fall below (text tower) / (full prediction), here "
        + ", ".join(f"{cost['text'] / cost['full_new']:.2f}x ({count} names)" for count, cost in costs.items())
        + ". Against a full prediction whose names are cached, new names on the encoded image cost "
        + ", ".join(f"{cost['new'] / cost['full_cached']:.2f}x ({count} names)" for count, cost in costs.items())
        + ".",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
