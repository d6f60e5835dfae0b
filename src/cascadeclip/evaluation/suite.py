"""A test suite: one checkpoint evaluated on every set of a benchmark suite found under a data root, one row per
set, as the cross-dataset tables of the open-vocabulary papers.

The "ov" suite is the COCO model's transfer to ADE20K-847, Pascal Context-459, ADE20K-150, Pascal Context-59 and -60,
Pascal VOC-20 and -21 and Cityscapes, each with its preset coco-to-<set>: every class is unknown to a COCO model, so
mIoU over all classes is the number reported. A set is absent when the label folders of its split are not on disk;
one whose labels are there but whose split cannot be listed is an error, before anything is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..config.dataset_file import load_dataset
from ..config.presets import CROSS_DATASET_TARGETS, resolve_config
from ..data.datasets import dataset_folder
from ..data.eval_dataset import EvalDataset
from ..utils import UserError
from .evaluate import evaluation_share
from .report import background_note, number_text

SUITES = {"ov": CROSS_DATASET_TARGETS}  # suite -> its sets, each evaluated with the preset coco-to-<set>


@dataclass
class SuiteSet:
    name: str
    cfg: Config
    samples: EvalDataset  # this process's share of the split


def find_suite_sets(
    suite: str, data_root: str | None, split: str, overrides: list[str]
) -> tuple[list[SuiteSet], list[dict[str, str]]]:
    """(the sets of `suite` present under the root, ready to evaluate; [{"set", "reason"}] of those absent).

    Raises UserError when a set's labels are present but its split cannot be listed (a missing split file or image
    folder), or when no set is present.
    """
    present, absent = [], []
    for name in SUITES[suite]:
        cfg = resolve_config(f"coco-to-{name}", overrides)
        root = data_root or cfg.data.root or None
        dataset = load_dataset(cfg.classes.dataset)
        if split not in dataset.splits:
            absent.append({"set": name, "reason": f"no {split} split"})
            continue
        folder = dataset_folder(dataset, root)
        missing = [source.labels for source in dataset.sources(split) if not (folder / source.labels).is_dir()]
        if missing:
            absent.append({"set": name, "reason": f"{Path(dataset.folder, missing[0])} not found"})
            continue
        present.append(SuiteSet(name, cfg, evaluation_share(cfg, root, split)))
    if not present:
        where = data_root or "the data root"
        raise UserError(
            f"no set of the {suite} suite found under {where}: "
            + "; ".join(f"{a['set']}: {a['reason']}" for a in absent)
        )
    return present, absent


def suite_row(name: str, cfg: Config, results: dict[str, Any], embeddings: str) -> dict[str, Any]:
    """One set's line of the suite's results: what identifies it, its numbers, and every per-class number."""
    return {
        "set": name,
        "config": cfg.name,
        "dataset": cfg.classes.dataset,
        "classes": len(cfg.classes.names),
        "embeddings": embeddings,
        **results,
    }


def suite_table(rows: list[dict[str, Any]], absent: list[dict[str, str]]) -> str:
    """One row per set evaluated (classes, images, mIoU, aAcc), then the sets absent and how background was
    predicted."""
    width = max([len("set")] + [len(row["set"]) for row in rows])
    lines = [f"{'set':<{width}}  {'classes':>7}  {'images':>7}  {'mIoU':>6}  {'aAcc':>6}"]
    for row in rows:
        lines.append(
            f"{row['set']:<{width}}  {row['classes']:>7}  {row['images']:>7}  {number_text(row['mIoU']):>6}  "
            f"{number_text(row['aAcc']):>6}"
        )
    if absent:
        lines.append("absent: " + ", ".join(f"{a['set']} ({a['reason']})" for a in absent))
    for row in rows:
        if row.get("background"):
            lines.append(f"{row['set']}: {background_note(row['background'])}")
        if row.get("skipped"):
            lines.append(f"{row['set']}: WARNING: {len(row['skipped'])} images could not be used and are NOT counted")
    return "\n".join(lines)
