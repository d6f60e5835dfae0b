"""The demo's report folder: the protocol's numbers over one or several seeds, its controls and calibration, whether
the issue's targets are met, pictures of predictions on unseen classes, training curves, and every number as JSON.

    <out>/report.md            the tables (mean ± standard deviation over seeds), targets, controls, calibration
    <out>/results.json         the same numbers, machine-readable, with every seed's values
    <out>/predictions.png      validation scenes with unseen objects: image, ground truth, each model's prediction
    <out>/curves.png           tiny CLIP pretraining loss and the segmentation training losses
    <out>/runs/<model>/        the training runs of one seed (several seeds: <out>/seed-<seed>/runs/<model>/)

Pictures and curves show the first seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..config.dataset_file import load_dataset  # noqa: E402
from ..data.datasets import list_samples, read_image, read_label  # noqa: E402
from ..engine.curves import read_log  # noqa: E402
from ..utils import IGNORE_INDEX, atomic_write  # noqa: E402
from ..visualize import legend, overlay, palette, side_by_side  # noqa: E402
from .calibration import CALIBRATION_SPLIT, SHIFT_GRID  # noqa: E402
from .protocol import AUTHORS_SHIFT, ProtocolResult, WorldRecipe  # noqa: E402

ZOOM = 4  # the world's 64-pixel scenes are drawn 4x larger
HEADLINE = {"mIoU_seen": "mIoU(S)", "mIoU_unseen": "mIoU(U)", "hIoU": "hIoU"}  # percentages, None: no class
MODELS = ("cascade-inductive", "cascade-transductive", "single-inductive", "single-transductive")
PROBE_FIELDS = ("class", "colour", "pattern")


def figures(result: ProtocolResult) -> dict[str, float | None]:
    """Every number the report states for one seed, flat: "<what> <metric>" -> value (percentages unless named)."""
    out: dict[str, float | None] = {}
    for name in MODELS:
        for key, label in HEADLINE.items():
            out[f"{name} {label}"] = result.metrics[name][key]
    for name, calibration in result.calibration.items():
        out[f"{name} shift"] = calibration["shift"]
        for key, label in HEADLINE.items():
            out[f"{name} {label} without shift"] = calibration["val_without_shift"][key]
            out[f"{name} {label} authors' shift"] = calibration["val_authors_shift"][key]
    for setting in ("inductive", "transductive"):
        for label in HEADLINE.values():
            a, b = out[f"cascade-{setting} {label}"], out[f"single-{setting} {label}"]
            out[f"cascade - single {setting} {label}"] = None if a is None or b is None else a - b
    out["supervised mIoU"] = result.supervised["mIoU"]
    out["supervised mIoU seen classes"] = result.supervised["mIoU_seen_classes"]
    out["supervised mIoU unseen classes"] = result.supervised["mIoU_unseen_classes"]
    for features, accuracies in result.probe.items():
        for field in PROBE_FIELDS:
            out[f"probe {features} {field}"] = accuracies[field]
    for kind in ("uniform", "majority"):
        for key, label in HEADLINE.items():
            out[f"chance {kind} {label}"] = result.chance[kind][key]
    out["clip zero-shot unseen"] = 100 * result.clip_facts["zero_shot_accuracy_unseen"]
    out["clip zero-shot seen"] = 100 * result.clip_facts["zero_shot_accuracy_seen"]
    cfg = result.configs["cascade-inductive"]
    for name in MODELS:
        for i in cfg.classes.unseen:
            out[f"{name} IoU {cfg.classes.names[i]}"] = result.metrics[name]["per_class"][i]["IoU"]
    out["minutes clip"] = result.seconds["clip"] / 60
    out["minutes total"] = sum(result.seconds[k] for k in ("dataset", "clip", "probe", "segmentation")) / 60
    return out


def summary(values: list[float | None]) -> dict:
    """{"mean", "std" (sample standard deviation; None for one value), "values"} of the values that exist."""
    present = [v for v in values if v is not None]
    mean = sum(present) / len(present) if present else None
    std = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return {"mean": mean, "std": std, "values": values}


def aggregate(results: list[ProtocolResult]) -> dict[str, dict]:
    per_seed = [figures(r) for r in results]
    return {key: summary([f[key] for f in per_seed]) for key in per_seed[0]}


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def cell(stat: dict, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std']:.{digits}f}"


def targets(results: list[ProtocolResult], stats: dict[str, dict]) -> list[dict]:
    """The issue's targets: for each, the value (mean over seeds), the threshold, in how many seeds it is met, and
    the measurement that bounds it."""
    per_seed = [figures(r) for r in results]

    def check(name: str, key: str, threshold, bound: str) -> dict:
        thresholds = [threshold(f) for f in per_seed]
        met = [f[key] is not None and f[key] >= t for f, t in zip(per_seed, thresholds, strict=True)]
        return {
            "target": name,
            "value": stats[key],
            "threshold": summary(thresholds),
            "met_in_seeds": sum(met),
            "seeds": len(met),
            "bound": bound,
        }

    probe_set = next(k[len("probe ") : -len(" class")] for k in stats if k.startswith("probe the cascade's maps"))
    probe = (
        f"a linear probe of the frozen tiny CLIP's tokens (the cascade's maps) names "
        f"{cell(stats[f'probe {probe_set} class'])}% of single-object tokens right (colour "
        f"{cell(stats[f'probe {probe_set} colour'])}%, pattern {cell(stats[f'probe {probe_set} pattern'])}%)"
    )
    zero_shot = (
        f"the tiny CLIP's zero-shot accuracy on unseen single objects is {cell(stats['clip zero-shot unseen'])}%"
    )
    ceiling_unseen = (
        f"trained with their labels (the supervised control) the same model reaches "
        f"{cell(stats['supervised mIoU unseen classes'])} on the unseen classes"
    )
    return [
        check("supervised control: mIoU ≥ 80", "supervised mIoU", lambda f: 80.0, probe),
        check(
            "inductive cascade: mIoU(S) ≥ 0.85 × the supervised control's mIoU on the seen classes",
            "cascade-inductive mIoU(S)",
            lambda f: 0.85 * (f["supervised mIoU seen classes"] or 0.0),
            f"the supervised control reaches {cell(stats['supervised mIoU seen classes'])} on the seen classes",
        ),
        check(
            "inductive cascade: mIoU(U) ≥ 50",
            "cascade-inductive mIoU(U)",
            lambda f: 50.0,
            f"{zero_shot}; {ceiling_unseen}",
        ),
        check(
            "transductive cascade: mIoU(U) ≥ 65",
            "cascade-transductive mIoU(U)",
            lambda f: 65.0,
            f"{ceiling_unseen}; {zero_shot}",
        ),
        check(
            "transductive cascade: hIoU ≥ 65",
            "cascade-transductive hIoU",
            lambda f: 65.0,
            f"{ceiling_unseen}, {cell(stats['supervised mIoU seen classes'])} on the seen ones",
        ),
    ]


def verdict(target: dict) -> str:
    if target["met_in_seeds"] == target["seeds"]:
        return "met" if target["seeds"] == 1 else f"met in all {target['seeds']} seeds"
    if target["seeds"] == 1:
        return "NOT met"
    return f"met in {target['met_in_seeds']} of {target['seeds']} seeds"


def difference_sentence(stats: dict, setting: str, seeds: int) -> str:
    parts = []
    for label in HEADLINE.values():
        stat = stats[f"cascade - single {setting} {label}"]
        if stat["mean"] is None:
            parts.append(f"{label}: n/a")
            continue
        ahead = "ahead of" if stat["mean"] > 0 else "behind" if stat["mean"] < 0 else "level with"
        spread = "" if seeds == 1 else f" (per seed: {', '.join(f'{v:+.1f}' for v in stat['values'] if v is not None)})"
        value = f"{stat['mean']:+.1f}" if stat["std"] is None else f"{stat['mean']:+.1f} ± {stat['std']:.1f}"
        parts.append(f"{label} {value}: the cascade is {ahead} the single decoder{spread}")
    return f"{setting.capitalize()}: " + "; ".join(parts) + "."


def markdown(results: list[ProtocolResult], recipe: WorldRecipe, wall_time: float) -> str:
    stats = aggregate(results)
    first = results[0]
    cfg = first.configs["cascade-inductive"]
    seeds = [r.seed for r in results]
    n = len(seeds)
    unseen_names = ", ".join(cfg.classes.names[i] for i in cfg.classes.unseen)
    spread = (
        "one seed"
        if n == 1
        else f"{n} seeds ({', '.join(map(str, seeds))}); cells are mean ± sample standard deviation"
    )

    def row(*cells: str) -> str:
        return "| " + " | ".join(cells) + " |"

    results_rows = [row("model", "setting", "mIoU(S)", "mIoU(U)", "hIoU"), "|---|---|---:|---:|---:|"]
    for name in MODELS:
        variant, setting = name.split("-")
        label = "cascade (3 stages)" if variant == "cascade" else "single last-layer decoder"
        results_rows.append(row(label, setting, *(cell(stats[f"{name} {m}"]) for m in HEADLINE.values())))
    results_rows.append(
        row(
            "control (a): cascade, every class seen",
            "supervised",
            cell(stats["supervised mIoU seen classes"]),
            cell(stats["supervised mIoU unseen classes"]),
            "-",
        )
    )
    for kind, label in (
        ("uniform", "chance: a uniformly random class per pixel"),
        ("majority", "chance: the most common training class everywhere"),
    ):
        results_rows.append(row(label, "-", *(cell(stats[f"chance {kind} {m}"]) for m in HEADLINE.values())))

    target_rows = [row("target", "value", "threshold", "met", "what bounds it"), "|---|---:|---:|---|---|"]
    for target in targets(results, stats):
        target_rows.append(
            row(target["target"], cell(target["value"]), cell(target["threshold"]), verdict(target), target["bound"])
        )

    probe_rows = [row("features", "class", "colour", "pattern", "tokens fitted / scored"), "|---|---:|---:|---:|---:|"]
    for features, accuracies in first.probe.items():
        probe_rows.append(
            row(
                features,
                *(cell(stats[f"probe {features} {f}"]) for f in PROBE_FIELDS),
                f"{accuracies['train_tokens']} / {accuracies['val_tokens']}",
            )
        )

    shift_rows = [
        row("model", "chosen shift", "mIoU(S) / mIoU(U) / hIoU at it", "without shift", f"authors' {AUTHORS_SHIFT}"),
        "|---|---:|---|---|---|",
    ]
    for name in first.calibration:
        triple = [
            " / ".join(cell(stats[f"{name} {m}{suffix}"]) for m in HEADLINE.values())
            for suffix in ("", " without shift", " authors' shift")
        ]
        shift_rows.append(row(name, cell(stats[f"{name} shift"], 2), *triple))
    grid = first.calibration["cascade-inductive"]["grid"]
    grid_line = ", ".join(f"{g['shift']:.2f}: {percent(g['hIoU'])}" for g in grid)

    unseen_rows = [row("model", *(cfg.classes.names[i] for i in cfg.classes.unseen)), "|---|" + "---:|" * 5]
    for name in MODELS:
        unseen_rows.append(row(name, *(cell(stats[f"{name} IoU {cfg.classes.names[i]}"]) for i in cfg.classes.unseen)))

    sources = sorted({r.clip_facts.get("source", "pretrained on this machine") for r in results})
    return "\n".join(
        [
            "# Cascade-CLIP in the miniature world",
            "",
            f"20 classes (colour x pattern, e.g. 'red striped'), 15 seen, 5 unseen ({unseen_names}); "
            f"{recipe.train_images} training, {recipe.heldout_images} held-out training and {recipe.val_images} "
            f"validation scenes of {cfg.model.image_encoder.image_size} px; {spread}. Each seed draws its own world, "
            f"tiny CLIP and training. Inductive runs: {recipe.iters} iterations of batch {cfg.train.batch_size} "
            f"(learning rate {cfg.train.lr:g}, {cfg.model.image_encoder.prompt_tokens} prompt tokens) from the tiny "
            f"CLIP; transductive runs: {recipe.iters // 2} more from the inductive midpoint. Metric: the project's "
            "evaluation on the validation split (background ignored, as in VOC). Numbers are percentages.",
            "",
            "## Results on the validation split",
            "",
            *results_rows,
            "",
            "Inductive models are scored at their calibrated seen-class shift (below). The supervised control's "
            "mIoU(S) and mIoU(U) columns are its mIoU on the same 15 and 5 classes, all of which it was trained on; "
            f"over all 20 classes it reaches {cell(stats['supervised mIoU'])}.",
            "",
            "## Targets",
            "",
            *target_rows,
            "",
            "## Controls",
            "",
            "**(a) Supervised ceiling.** The cascade trained with every class labelled, same model, recipe and "
            f"iterations: mIoU {cell(stats['supervised mIoU'])} over all 20 classes, "
            f"{cell(stats['supervised mIoU seen classes'])} on the 15 seen, "
            f"{cell(stats['supervised mIoU unseen classes'])} on the 5 unseen. No zero-shot model of this size "
            "should be expected to do better in this world.",
            "",
            "**(b) Linear probe of the frozen tiny CLIP's tokens**, fitted on "
            f"{recipe.probe_images} training scenes, scored on the validation scenes: the share of tokens covered by "
            "one object (75% of their pixels) whose class, colour and pattern a linear classifier of the tokens gets "
            "right. The segmentor's mask scores are dot products with these tokens (after its learnt prompts and "
            "decoders), so what the probe cannot tell apart is hard for it too.",
            "",
            *probe_rows,
            "",
            "**Tiny CLIP zero-shot classification** of single objects from the class names alone (top-1 among all 20 "
            f"classes): unseen classes {cell(stats['clip zero-shot unseen'])}%, seen classes "
            f"{cell(stats['clip zero-shot seen'])}%. Everything the segmentor knows about unseen classes comes from "
            "this frozen CLIP.",
            "",
            "## Calibration of the seen-class shift",
            "",
            "The inductive protocol subtracts a constant from the seen classes' probabilities at test time; the "
            f"authors use {AUTHORS_SHIFT}, tuned for OpenAI's CLIP. Here it is chosen by a rule fixed in advance: "
            f"evaluate each trained inductive model on the {recipe.heldout_images} held-out training scenes "
            f"(`{CALIBRATION_SPLIT}` split: the training distribution, never trained on) at the shifts "
            f"{SHIFT_GRID[0]:g}, {SHIFT_GRID[1]:g}, ..., {SHIFT_GRID[-1]:g}, and take the one with the best hIoU (the "
            "smallest among equals). **This choice uses the held-out training scenes' labels of all classes, the "
            "unseen classes included**; the validation scenes are never used for it.",
            "",
            *shift_rows,
            "",
            f"hIoU of the inductive cascade on the held-out scenes by shift (seed {first.seed}): {grid_line}.",
            "",
            "## Cascade − single decoder",
            "",
            difference_sentence(stats, "inductive", n),
            "",
            difference_sentence(stats, "transductive", n),
            "",
            "IoU of each unseen class:",
            "",
            *unseen_rows,
            "",
            "## Time",
            "",
            f"Wall time {wall_time / 60:.1f} min for {n} seed{'s' if n > 1 else ''}; per seed "
            f"{cell(stats['minutes total'])} min, of which the tiny CLIP {cell(stats['minutes clip'])} min "
            f"({'; '.join(sources)}; a cached CLIP takes seconds). {machine_load()}",
            "",
            f"![predictions](predictions.png)  (seed {first.seed})",
            "",
            f"![curves](curves.png)  (seed {first.seed})",
            "",
        ]
    )


def machine_load() -> str:
    """The machine's load when the report is written: wall times mean little on a machine busy with other work."""
    if not hasattr(os, "getloadavg"):
        return ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"Load average of the machine at the end (1, 5, 15 min): {load}, on {os.cpu_count()} cores."


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


def write_report(results: list[ProtocolResult], recipe: WorldRecipe, out: Path, wall_time: float) -> Path:
    """Write the report folder's files (see the module docstring); returns the markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    stats = aggregate(results)
    data = {
        "seeds": [r.seed for r in results],
        "figures": stats,
        "targets": targets(results, stats),
        "per_seed": [
            {
                "seed": r.seed,
                "models": r.metrics,
                "calibration": r.calibration,
                "supervised": r.supervised,
                "probe": r.probe,
                "chance": r.chance,
                "clip": {k: v for k, v in r.clip_facts.items() if k != "losses"},
                "seconds": r.seconds,
            }
            for r in results
        ],
        "wall_time_seconds": wall_time,
        "recipe": {
            "train_images": recipe.train_images,
            "heldout_images": recipe.heldout_images,
            "val_images": recipe.val_images,
            "probe_images": recipe.probe_images,
            "iters": recipe.iters,
        },
    }
    text = json.dumps(data, indent=2, default=str)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(text))
    picture = prediction_picture(results[0])
    atomic_write(out / "predictions.png", lambda tmp: picture.save(tmp, format="png"))
    curves_figure(results[0], out / "curves.png")
    report = out / "report.md"
    atomic_write(report, lambda tmp: tmp.write_text(markdown(results, recipe, wall_time)))
    return report
