"""`cascade-clip segment`: segment images with any class names; per image a label PNG, an overlay and a summary.

For each input image `NAME.ext` the output folder gets:
- `NAME_labels.png`: palette PNG, pixel value = position of the class in the list given (0, 1, ...), 255 =
  background (only with --background; drawn black);
- `NAME_overlay.png`: the image at its own resolution with each class tinted and outlined, above a legend strip
  listing the classes found (largest first, with their share of the image) and naming those not found;
- `NAME.json`: per class its colour, pixel share, mean score over its pixels and highest score anywhere;
- `NAME_scores.npz` with --scores: per-class probability maps (float16, compressed, at the image's resolution).

Everything is checked before anything is written (class names, the options, the output folder, that every image
exists and decodes, the weights). Only files this command wrote are ever overwritten: the output folder keeps a list
of them (`manifest.Manifest`), and an output name taken by any other file (the user's own `cat_overlay.png`, say)
stops the run before it starts. Folders and patterns given as inputs leave out the files on such a list.

Each file is written atomically and the JSON last, so an interrupted run resumes: an image is skipped when its JSON
records the same settings, the same weights files and the same input, each told by its size and the SHA-256 of its
bytes: an image or weights file replaced at the same path is segmented again, even when a copy kept the size and the
modification time (`cp -p`). Hashing costs little beside the work it guards: every image is decoded anyway, and the
weights are hashed once per run (benchmarks/NOTES.md, "What a rerun skips").

At scale: images are decoded and resized in DataLoader worker processes (--workers) while the model runs, the windows
of consecutive images go through the model together (`Segmenter.predict_many`), and a progress bar shows images per
second. `torchrun --nproc-per-node N -m cascadeclip segment ...` splits the images over N processes (process r takes
every N-th image from the r-th): each image is written once, by one process, and a rerun still skips finished ones.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..config import ConfigError
from ..data.image_files import image_loader, reissue_warnings, unreadable_images
from ..data.images import IMAGE_SUFFIXES
from ..distributed import DistInfo, all_gather_objects, check_device, cleanup, init_distributed
from ..factory import WEIGHTS_HELP, resolve_checkpoint
from ..manifest import Manifest
from ..outputs import check_name, check_output_folder
from ..segmenter import BACKGROUND_NAME, Prediction, Segmenter, check_class_names, parse_class_names
from ..utils import UserError, atomic_write, sha256_of
from ..visualize import BACKGROUND_LABEL, IGNORE_COLOR, palette, segmentation_overlay
from .options import non_negative_int, positive_int

HELP = "segment images with any class names (writes label PNGs, overlays with a legend, JSON summaries)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (the images directly inside) or quoted glob patterns ('**' recurses)",
    )
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", help='class names separated by commas, e.g. "cat, dog, grass"')
    names.add_argument(
        "--classes-file", type=Path, help="a text file with one class name per line (blank lines skipped)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/segment"), help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--background",
        type=float,
        nargs="?",
        const=0.5,
        metavar="T",
        help="label pixels where no class reaches probability T (default 0.5) as background (255)",
    )
    parser.add_argument("--scores", action="store_true", help="also write the per-class probability maps (.npz)")
    add_model_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="redo images that already have outputs")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="processes that decode and resize images while the model runs (default: %(default)s; 0: none)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that build the `Segmenter` (`build_segmenter`): weights, inference mode, templates, device."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="Cascade-CLIP weights: an authors' .pth (a pickle: trusted files only), a cascadeclip .safetensors, "
        "or the name of a model on the Hugging Face Hub (ORG/NAME; a local path of that name wins)",
    )
    parser.add_argument(
        "--clip-weights",
        type=Path,
        help="OpenAI CLIP ViT-B-16.pt (or it converted): the text tower that embeds the class names; "
        "needed when the checkpoint has none, used instead of the checkpoint's when given",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="smoke test only: a ViT-B/16-sized model with random weights; the output is meaningless",
    )
    parser.add_argument(
        "--mode",
        choices=["slide", "whole"],
        default="slide",
        help="sliding 512 windows as the authors evaluate (default), or one forward per image",
    )
    parser.add_argument(
        "--single-template",
        action="store_true",
        help='embed names with "a photo of a {}" only, instead of the 15-template ensemble',
    )
    parser.add_argument(
        "--short-side", type=positive_int, help="resize the short side to this before inference (default: 512)"
    )
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="run the image encoder in bfloat16 (the head stays in fp32): faster on CPUs with AMX or AVX-512 bf16",
    )


def read_class_names(args: argparse.Namespace) -> list[str]:
    if args.classes is not None:
        return check_class_names(parse_class_names(args.classes))
    if args.classes_file.is_dir():
        raise UserError(f"--classes-file {args.classes_file} is a folder; give a text file with one name per line")
    try:  # utf-8-sig: a byte-order mark (as some editors write) is not part of the first name
        lines = args.classes_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the class file {args.classes_file}: {err}") from None
    return check_class_names([line for line in lines if line.strip()])


def find_images(inputs: list[str]) -> list[Path]:
    """Image paths from files, folders (images directly inside) and glob patterns, in the order given.

    Folders and patterns take only files with an image suffix (saying how many others they left out) and leave out
    the files cascade-clip wrote (listed in their folder's manifest), so that a rerun into the input folder does not
    segment its own overlays.
    """
    manifests: dict[Path, set[str]] = {}

    def ours(p: Path) -> bool:
        if p.parent not in manifests:
            manifests[p.parent] = Manifest(p.parent).names()
        return p.name in manifests[p.parent]

    def images_among(candidates: list[Path], source: str) -> list[Path]:
        files = [p for p in candidates if p.is_file() and not ours(p)]
        images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) < len(files):
            print(
                f"note: {source}: left out {len(files) - len(images)} file(s) without an image suffix", file=sys.stderr
            )
        return images

    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images = images_among(list(path.iterdir()), f"folder {path}")
            if not images:
                raise UserError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise UserError(f"input {path} is not a regular file (a pipe, a device?); give image files or folders")
        elif path.is_symlink():
            raise UserError(f"input {path} is a symbolic link that leads nowhere (or to itself)")
        elif any(c in item for c in "*?["):
            images = images_among([Path(p) for p in glob.glob(str(path), recursive=True)], item)
            if not images:
                raise UserError(f"no image files match {item}")
            found += images
        else:
            raise UserError(f"input {path} not found")
    found = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise UserError(
                f"{stems[path.stem]} and {path} would write the same outputs ({path.stem}_*); "
                "rename one or segment them into different --out folders"
            )
        stems[path.stem] = path
    return found


def check_readable(images: list[Path], workers: int) -> None:
    """UserError naming an image that cannot be decoded; each process checks its own share, with `workers` processes,
    and all hear of a failure (so that none starts writing)."""
    problems = [message for share in all_gather_objects(unreadable_images(images, workers)) for message in share]
    if problems:
        more = f" (and {len(problems) - 1} more images that cannot be read)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def claim_outputs(manifest: Manifest, outputs: list[Path], is_main: bool) -> None:
    """The main process claims the outputs in --out's manifest; every process hears if that was refused (a file of
    the user's appeared since the check), so that none starts writing."""
    refusal = None
    if is_main:
        try:
            manifest.claim(outputs, "--out")
        except UserError as err:
            refusal = str(err)
    refusals = [r for r in all_gather_objects(refusal) if r is not None]
    if refusals:
        raise UserError(refusals[0])


def output_paths(out: Path, image: Path, with_scores: bool) -> dict[str, Path | None]:
    return {
        "labels": out / f"{image.stem}_labels.png",
        "overlay": out / f"{image.stem}_overlay.png",
        "scores": out / f"{image.stem}_scores.npz" if with_scores else None,
        "summary": out / f"{image.stem}.json",
    }


def file_identity(path: Path) -> dict[str, Any]:
    """What tells a file's content apart: its size and the SHA-256 of its bytes (not its name or modification
    time, which a copy can keep)."""
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def is_done(paths: dict[str, Path | None], settings: dict, source: dict) -> bool:
    """True when the image's summary exists, records the same settings and the same input file (`file_identity`),
    and all its files exist."""
    try:
        summary = json.loads(paths["summary"].read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(summary, dict)
        and summary.get("settings") == settings
        and summary.get("source") == source
        and all(p.is_file() for p in paths.values() if p is not None)
    )


def write_outputs(
    image_path: Path,
    image: Image.Image,
    prediction: Prediction,
    paths: dict,
    colors: np.ndarray,
    settings: dict,
    source: dict,
) -> None:
    """The label PNG, the overlay, the scores if asked for, and last the JSON summary; each written atomically."""
    names = prediction.names
    label_png = Image.fromarray(prediction.labels, mode="P")
    table = np.tile(np.array(IGNORE_COLOR, dtype=np.uint8), (256, 1))
    table[: len(names)] = colors
    label_png.putpalette(table.ravel().tolist())
    atomic_write(paths["labels"], lambda tmp: label_png.save(tmp, format="PNG"))

    background = settings["background"]
    background_text = f"{BACKGROUND_NAME} (no class >= {background:.2f})" if background is not None else None
    caption = "RANDOM WEIGHTS: the labels are noise." if settings["checkpoint"] == "random" else ""
    picture, legend_lines = segmentation_overlay(
        image, prediction.labels, names, colors, background_text, caption=caption
    )
    info = PngInfo()
    info.add_text("Description", "Cascade-CLIP segmentation. " + "; ".join(legend_lines))
    atomic_write(paths["overlay"], lambda tmp: picture.save(tmp, format="PNG", pnginfo=info))

    if paths["scores"] is not None:

        def write_scores(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, scores=prediction.scores, names=np.array(names))

        atomic_write(paths["scores"], write_scores)

    summary = {
        "image": str(image_path),
        "width": int(prediction.labels.shape[1]),
        "height": int(prediction.labels.shape[0]),
        "classes": [
            {
                "index": i,
                "name": name,
                "color": "#{:02x}{:02x}{:02x}".format(*colors[i]),
                "pixel_share": round(float(prediction.pixel_share[i]), 6),
                "mean_score": round(float(prediction.mean_score[i]), 6),
                "max_score": round(float(prediction.max_score[i]), 6),
            }
            for i, name in enumerate(names)
        ],
        "background": None
        if background is None
        else {
            "index": BACKGROUND_LABEL,
            "threshold": background,
            "pixel_share": round(prediction.background_share, 6),
        },
        "files": {k: p.name for k, p in paths.items() if p is not None and k != "summary"},
        "settings": settings,
        "source": source,
    }
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(paths["summary"], lambda tmp: tmp.write_text(text))


# The keys of the Segmenter's inference protocol that the options set (and the model's crop, which none sets), as its
# errors name them: "--short-side (10) must be at least the window size (512) in slide mode", not "short_side".
PROTOCOL_OPTIONS = {"short_side": "--short-side", "mode": "--mode", "crop_size": "the window size"}


def build_segmenter(args: argparse.Namespace, device: str | None = None) -> Segmenter:
    """The Segmenter the options ask for, on `device` (default: --device)."""
    try:
        return _build_segmenter(args, device)
    except ConfigError as err:
        raise err.renamed(PROTOCOL_OPTIONS) from None


def _build_segmenter(args: argparse.Namespace, device: str | None) -> Segmenter:
    options = dict(
        device=device or args.device,
        templates="single" if args.single_template else "multi",
        mode=args.mode,
        short_side=args.short_side,
        bf16=args.bf16,
    )
    if args.random_weights:
        if args.checkpoint is not None:
            raise UserError("give --checkpoint or --random-weights, not both")
        print(
            "RANDOM weights (--random-weights): the segmentations written are meaningless; this only tests the path",
            file=sys.stderr,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return Segmenter.with_random_weights(**options)
    if args.checkpoint is None:
        raise UserError(f"no --checkpoint given. {WEIGHTS_HELP}")
    args.checkpoint = resolve_checkpoint(args.checkpoint)  # a Hub name becomes its file, recorded with the outputs
    return Segmenter.from_pretrained(args.checkpoint, args.clip_weights, **options)


def output_settings(
    args: argparse.Namespace, segmenter: Segmenter, names: list[str], background: float | None, scores: bool
) -> dict:
    """What made an image's outputs (recorded in its JSON; a rerun with other settings redoes the image)."""
    return {
        "classes": names,
        "checkpoint": "random" if args.random_weights else file_identity(args.checkpoint),
        "clip_weights": file_identity(args.clip_weights) if args.clip_weights else None,
        "templates": segmenter.templates,
        "mode": segmenter.mode,
        "short_side": segmenter.short_side,
        "background": background,
        "scores": scores,
    }


def run(args: argparse.Namespace) -> int:
    names = read_class_names(args)
    if args.background is not None:
        if not 0 < args.background < 1:
            raise UserError(f"--background takes a probability between 0 and 1, got {args.background}")
        if BACKGROUND_NAME in (n.casefold() for n in names):
            raise UserError(f"a class is named {BACKGROUND_NAME!r} and --background is set; drop one of them")
    elif len(names) == 1:
        print(
            f"note: with one class and no --background every pixel is {names[0]!r}; add --background or more names",
            file=sys.stderr,
        )
    check_device(args.device)
    info = init_distributed(args.device)  # under torchrun: this process's rank and device
    try:
        return _segment(args, names, info)
    finally:
        cleanup()


def _segment(args: argparse.Namespace, names: list[str], info: DistInfo) -> int:
    """Everything is checked by every process (each decodes its own share of the images) before the main process
    claims the outputs; then each process segments its share."""
    out = check_output_folder(args.out, "--out")
    manifest = Manifest(out)
    images = find_images(args.inputs)
    plan = {image: output_paths(out, image, args.scores) for image in images}
    outputs = [p for paths in plan.values() for p in paths.values() if p is not None]
    for path in outputs:
        check_name(path.name, f"output {path}")
    manifest.refuse_foreign(outputs, "--out")
    share = images[info.rank :: info.world_size]
    check_readable(share, args.workers)
    segmenter = build_segmenter(args, device=str(info.device) if info.world_size > 1 else None)
    claim_outputs(manifest, outputs, info.is_main)
    settings = output_settings(args, segmenter, names, args.background, args.scores)
    sources = {p: file_identity(p) for p in share}  # hashed once, before the image is read for the model
    todo = [p for p in share if args.overwrite or not is_done(plan[p], settings, sources[p])]
    rate = segment_images(segmenter, todo, plan, names, args, settings, sources, show_progress=info.is_main)
    shares = all_gather_objects((len(share), len(share) - len(todo), rate))
    if not info.is_main:
        return 0
    done = sum(skipped for _, skipped, _ in shares)
    segmented = len(images) - done
    now_of_all = f"{segmented} of {len(images)}" if done else f"{len(images)}"  # the skipped were not segmented now
    skipped = f" ({done} already done, skipped)" if done else ""
    split = ""
    if info.world_size > 1:
        counts = ", ".join(f"{count} in process {rank}" for rank, (count, _, _) in enumerate(shares))
        split = f" over {info.world_size} processes ({counts})"
    rates = [r for _, _, r in shares if r is not None]
    speed = f"; {sum(rates):.3f} images/s" if rates and segmented > 1 else ""  # as the progress bar: not for one
    print(
        f"segmented {now_of_all} image(s){split} into {args.out}{skipped}: *_labels.png, *_overlay.png, *.json"
        + (", *_scores.npz" if args.scores else "")
        + speed
        + (". The weights were RANDOM: the labels are meaningless" if args.random_weights else "")
    )
    return 0


def segment_images(
    segmenter: Segmenter,
    images: list[Path],
    plan: dict[Path, dict],
    names: list[str],
    args: argparse.Namespace,
    settings: dict,
    sources: dict[Path, dict],
    show_progress: bool,
) -> float | None:
    """Segment `images` and write their outputs; images per second (reading, model and writing; None for none).

    DataLoader workers decode and resize the next images while the model runs on the windows of the current ones.
    """
    colors = palette(len(names))

    def decoded():
        for item in image_loader(images, segmenter.short_side, args.workers):
            if item["error"] is not None:  # it could be read at the start: changed since
                raise UserError(item["error"])
            reissue_warnings(item)
            yield item, item["tensor"], tuple(item["image"].shape[:2])

    predictions = segmenter.predict_many(decoded(), names, args.background, args.scores, np.float16)
    segmenter.class_embeddings(names)  # embedded (or read from the cache) before the clock starts
    progress = tqdm(total=len(images), desc="segment", unit="image", disable=not show_progress or len(images) < 2)
    start = time.perf_counter()
    for item, prediction in predictions:
        path = images[item["index"]]
        picture = Image.fromarray(item["image"].numpy())
        write_outputs(path, picture, prediction, plan[path], colors, settings, sources[path])
        progress.update()
    progress.close()
    # Images complete in bursts (several share a forward), so the rate is over the whole loop, first forward included.
    return len(images) / (time.perf_counter() - start) if images else None
