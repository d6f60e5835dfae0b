"""`cascade-clip check-data`: report what is missing or malformed under a dataset root, before a long run.

Exit status 0 when every split found is complete and valid, 1 when anything is wrong, 2 when no dataset is found.
"""

from __future__ import annotations

import argparse

from ..config.dataset_file import BUILTIN_DATASETS, DatasetSpec, load_dataset
from ..data.check import SplitReport, check_split
from ..data.datasets import DATA_ROOT_ENV, data_root, split_present
from ..utils import UserError
from .options import non_negative_int

HELP = "check a dataset root: images and labels per split, missing files, unreadable labels, values out of range"
SHOWN = 10  # problems listed per kind; the rest are counted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help=f"dataset root (default: ${DATA_ROOT_ENV}, else ./datasets)")
    parser.add_argument(
        "--dataset",
        action="append",
        help=f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}) or the path of a dataset YAML file (repeatable; "
        "default: every built-in one present under the root)",
    )
    parser.add_argument("--split", action="append", help="check only this split (repeatable; default: all)")
    parser.add_argument(
        "--decode-images", action="store_true", help="decode every image in full to find truncated files (slower)"
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="processes reading files (default: %(default)s)"
    )


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"    {title} ({len(items)}):"] + [f"      {item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"      ... and {len(items) - SHOWN} more")
    return lines


def format_report(report: SplitReport, published_sizes: dict[str, int]) -> str:
    if report.error:
        return f"  {report.split:<6} PROBLEM: {report.error}"
    status = "ok" if report.ok else "PROBLEMS"
    lines = [
        f"  {report.split:<6} {report.listed:>7} listed {report.images:>7} images {report.labels:>7} labels  {status}"
    ]
    standard = published_sizes.get(report.split)
    if standard is not None and report.listed != standard:
        lines.append(
            f"    note: the standard {report.split} split has {standard} images (published numbers are over it)"
        )
    lines += _listing("listed names without an image", report.missing_images)
    lines += _listing("listed names without a label", report.missing_labels)
    lines += _listing("label files without an image", report.unmatched_labels)
    lines += _listing("unusable files", report.bad_files)
    return "\n".join(lines)


def present_builtin_datasets(root) -> list[DatasetSpec]:
    """The built-in datasets with a split on disk under `root`, each set of files once: a dataset that reads only
    files of one found before it (VOC-21 reads VOC's, Context-60 Context's) is left out."""
    found, files = [], set()
    for name in BUILTIN_DATASETS:
        spec = load_dataset(name)
        suffixes = (spec.image_suffix, spec.label_suffix)
        own = {(spec.folder, suffixes, source) for split in spec.splits for source in spec.sources(split)}
        if own <= files or not any(split_present(spec, root, split) for split in spec.splits):
            continue
        found.append(spec)
        files |= own
    return found


def run(args: argparse.Namespace) -> int:
    root = data_root(args.data_root)
    datasets = [load_dataset(d) for d in args.dataset] if args.dataset else present_builtin_datasets(root)
    if not datasets:
        folders = dict.fromkeys(load_dataset(name).folder for name in BUILTIN_DATASETS)
        raise UserError(
            f"no dataset found under {root}: expected one of {', '.join(folders)}. Give --data-root or "
            f"${DATA_ROOT_ENV}, or --dataset with your dataset file"
        )
    print(f"checking {', '.join(spec.name for spec in datasets)} under {root}")
    all_ok = True
    for spec in datasets:
        print(f"{spec.name} ({spec.folder}, {spec.num_classes} classes)")
        for split in args.split or list(spec.splits):
            report = check_split(spec, str(root), split, args.decode_images, args.workers, progress=True)
            print(format_report(report, spec.published_sizes), flush=True)
            all_ok &= report.ok
    print("all checked splits are complete and valid" if all_ok else "problems found (see above)")
    return 0 if all_ok else 1
