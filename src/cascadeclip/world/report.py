"""The demo's report folder: a markdown table of the protocol's numbers, pictures of predictions on unseen classes,
training curves, and every number as JSON.

    <out>/report.md            the table, chance level, the tiny CLIP's zero-shot accuracy, what won
    <out>/results.json         the same numbers, machine-readable
    <out>/predictions.png      validation scenes with unseen objects: image, ground truth, each model's prediction
    <out>/curves.png           tiny CLIP pretraining loss and the four segmentation training losses
    <out>/runs/<model>/        the training runs (config, checkpoints, log, curves)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..config.dataset_file import load_dataset  # noqa: E402
from ..data.datasets import list_samples, read_image, read_label  # noqa: E402
from ..engine.curves import read_log  # noqa: E402
from ..utils import (
    IGNORE_INDEX,  # noqa: E402
    atomic_write,  # noqa: E402
)
from ..visualize import legend, overlay, palette, side_by_side  # noqa: E402
from .protocol import ProtocolResult, WorldRecipe  # noqa: E402

ZOOM = 4  # the world's 64-pixel scenes are drawn 4x larger


HEADLINE = ("mIoU_seen", "mIoU_unseen", "hIoU")  # percentages, None where a mean has no class


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def headline(result: ProtocolResult) -> dict:
    """The numbers the report states, as plain data (percentages)."""
    chance_unseen = max(result.chance["uniform"]["mIoU_unseen"] or 0.0, result.chance["majority"]["mIoU_unseen"] or 0.0)
    cascade_unseen = result.metrics["cascade-inductive"]["mIoU_unseen"] or 0.0
    return {
        "models": {k: {m: v[m] for m in HEADLINE} for k, v in result.metrics.items()},
        "inductive_without_seen_shift": {k: {m: v[m] for m in HEADLINE} for k, v in result.unshifted.items()},
        "chance": {k: {m: v[m] for m in HEADLINE} for k, v in result.chance.items()},
        "chance_unseen": chance_unseen,
        "cascade_inductive_unseen_over_chance": cascade_unseen / chance_unseen if chance_unseen > 0 else None,
        "clip_zero_shot_accuracy_unseen": 100 * result.clip_facts["zero_shot_accuracy_unseen"],
        "clip_zero_shot_accuracy_seen": 100 * result.clip_facts["zero_shot_accuracy_seen"],
    }


def comparison_sentence(result: ProtocolResult, setting: str) -> str:
    cascade, single = result.metrics[f"cascade-{setting}"], result.metrics[f"single-{setting}"]
    parts = []
    for key, what in (("mIoU_unseen", "unseen mIoU"), ("hIoU", "hIoU")):
        a, b = cascade[key] or 0.0, single[key] or 0.0
        winner = "the cascade" if a > b else "the single decoder" if b > a else "neither"
        parts.append(f"{what}: {winner} (cascade {a:.1f}, single {b:.1f})")
    return f"{setting.capitalize()}: " + "; ".join(parts) + "."


def markdown(result: ProtocolResult, recipe: WorldRecipe, wall_time: float) -> str:
    facts = headline(result)
    rows = ["| model | setting | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---:|---:|---:|"]
    for name, m in result.metrics.items():
        variant, setting = name.split("-")
        label = "cascade (3 stages)" if variant == "cascade" else "single last-layer decoder"
        rows.append(f"| {label} | {setting} | " + " | ".join(percent(m[k]) for k in HEADLINE) + " |")
    for kind, label in (
        ("uniform", "chance: a uniformly random class per pixel"),
        ("majority", f"chance: '{result.chance['majority']['class']}' everywhere"),
    ):
        rows.append(f"| {label} | - | " + " | ".join(percent(result.chance[kind][k]) for k in HEADLINE) + " |")
    ratio = facts["cascade_inductive_unseen_over_chance"]
    verdict = (
        "n/a" if ratio is None else f"{ratio:.1f}x chance (target: at least 3x, {'met' if ratio >= 3 else 'NOT met'})"
    )
    cfg = result.configs["cascade-inductive"]
    unseen_names = ", ".join(cfg.classes.names[i] for i in cfg.classes.unseen)
    return "\n".join(
        [
            "# Cascade-CLIP in the miniature world",
            "",
            f"20 classes (colour x pattern, e.g. 'red striped'), 15 seen, 5 unseen ({unseen_names}); "
            f"{recipe.train_images} training and {recipe.val_images} validation scenes of "
            f"{cfg.model.image_encoder.image_size} px; seed {recipe.seed}. Inductive runs: {recipe.iters} "
            f"iterations of batch {cfg.train.batch_size} from the tiny CLIP; transductive runs: {recipe.iters // 2} "
            "more from the inductive midpoint. Metric: the project's evaluation on the "
            "validation split (background ignored, as in VOC). Numbers are percentages.",
            "",
            *rows,
            "",
            f"**Chance level** (mIoU(U) of the better image-blind prediction): {percent(facts['chance_unseen'])}. The "
            f"inductive cascade's mIoU(U) is {verdict}.",
            "",
            f"**Tiny CLIP zero-shot classification** of single objects from the class names alone (top-1 among all 20 "
            f"classes): unseen classes {percent(facts['clip_zero_shot_accuracy_unseen'])}%, seen classes "
            f"{percent(facts['clip_zero_shot_accuracy_seen'])}%. Everything the segmentor knows about unseen classes "
            "comes from this frozen CLIP.",
            "",
            "**Cascade vs single decoder.** "
            + comparison_sentence(result, "inductive")
            + " "
            + comparison_sentence(result, "transductive"),
            "",
            "In the inductive setting the protocol subtracts 0.1 from seen-class probabilities at test time (the "
            "reference's calibration). Without it, the inductive models score:",
            "",
            "| model | mIoU(S) | mIoU(U) | hIoU |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | " + " | ".join(percent(m[k]) for k in HEADLINE) + " |"
                for name, m in result.unshifted.items()
            ),
            "",
            "IoU of each unseen class:",
            "",
            *unseen_table(result),
            "",
            f"Wall time: {wall_time / 60:.1f} min, of which tiny CLIP pretraining "
            f"{result.seconds['clip'] / 60:.1f} min (near 0 when it was cached) and segmentation training and "
            f"evaluation {sum(v for k, v in result.seconds.items() if k not in ('clip', 'dataset')) / 60:.1f} min.",
            "",
            "![predictions](predictions.png)",
            "",
            "![curves](curves.png)",
            "",
        ]
    )


def unseen_table(result: ProtocolResult) -> list[str]:
    cfg = result.configs["cascade-inductive"]
    names = [cfg.classes.names[i] for i in cfg.classes.unseen]
    rows = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, m in result.metrics.items():
        rows.append(f"| {name} | " + " | ".join(percent(m["per_class"][i]["IoU"]) for i in cfg.classes.unseen) + " |")
    return rows


def prediction_picture(result: ProtocolResult, count: int = 4) -> Image.Image:
    """Validation scenes holding unseen objects, one row each: image, ground truth, each model's prediction on the
    object pixels."""
    cfg = result.configs["cascade-inductive"]
    dataset = load_dataset(cfg.classes.dataset)
    names = list(cfg.classes.names)
    colors = palette(len(names))
    unseen = set(cfg.classes.unseen)
    samples = [
        s
        for s in list_samples(dataset, cfg.data.root, "val")
        if unseen & set(np.unique(read_label(s.label, dataset)).tolist())
    ][:count]
    rows = []
    for sample in samples:
        image = Image.fromarray(read_image(sample.image))
        label = read_label(sample.label, dataset)
        # Only labelled pixels are scored (background is ignored, as in VOC), so only they are coloured.
        scored = [np.where(label == IGNORE_INDEX, IGNORE_INDEX, p[sample.name]) for p in result.predictions.values()]
        panels = [image, overlay(image, label, colors), *(overlay(image, p, colors) for p in scored)]
        big = [p.resize((p.width * ZOOM, p.height * ZOOM), Image.NEAREST) for p in panels]
        rows.append(side_by_side(big, ["image", "ground truth", *result.predictions]))
    marked = [f"{n} (unseen)" if i in unseen else n for i, n in enumerate(names)]
    grid = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        grid.paste(row, (0, sum(r.height for r in rows[:i])))
    return side_by_side([grid, legend(marked, colors, grid.height)])


def curves_figure(result: ProtocolResult, path: Path) -> None:
    fig, (ax_clip, ax_seg) = plt.subplots(1, 2, figsize=(11, 3.8))
    losses = result.clip_facts["losses"]
    ax_clip.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax_clip.set(title="tiny CLIP contrastive pretraining", xlabel="step", ylabel="loss")
    for name, run in result.runs.items():
        records = [r for r in read_log(run / "log.jsonl") if "loss" in r]
        # A transductive run continues the inductive run's midpoint, i.e. after as many iterations as it runs itself.
        offset = result.configs[name].train.iters if name.endswith("transductive") else 0
        ax_seg.plot([r["iter"] + offset for r in records], [r["loss"] for r in records], label=name, linewidth=1)
    ax_seg.set(
        title="segmentation training (focal x100 + dice)",
        xlabel="iteration (transductive: from midpoint)",
        ylabel="loss",
    )
    ax_seg.set_yscale("log")  # the first iterations' loss is 20x the rest
    ax_seg.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_report(result: ProtocolResult, recipe: WorldRecipe, out: Path, wall_time: float) -> Path:
    """Write the report folder's files (see the module docstring); returns the markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        **headline(result),
        "per_class": {k: v["per_class"] for k, v in result.metrics.items()},
        "wall_time_seconds": wall_time,
        "recipe": {
            "seed": recipe.seed,
            "train_images": recipe.train_images,
            "val_images": recipe.val_images,
            "iters": recipe.iters,
        },
    }
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
    picture = prediction_picture(result)
    atomic_write(out / "predictions.png", lambda tmp: picture.save(tmp, format="png"))
    curves_figure(result, out / "curves.png")
    report = out / "report.md"
    atomic_write(report, lambda tmp: tmp.write_text(markdown(result, recipe, wall_time)))
    return report
