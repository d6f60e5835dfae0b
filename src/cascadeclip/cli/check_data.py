"""`cascade-clip check-data`: report what is missing or malformed under a dataset root, before a long run.

Exit status 0 when every split found is complete and valid, 1 when anything is wrong, 2 when no dataset is found.
"""

from __future__ import annotations

import argparse

from ..data.check import SplitReport, check_split
from ..data.datasets import DATA_ROOT_ENV, LAYOUTS, data_root
from ..utils import UserError

HELP = "check a dataset root: images and labels per split, missing files, unreadable labels, values out of range"
SHOWN = 10  # problems listed per kind; the rest are counted
# Images in the standard splits (docs/method.md, Datasets); another count is not an error (e.g. a subset on purpose)
# but is pointed out, since the published numbers are over the full splits. VOC train is left out: train.txt +
# aug.txt lists depend on the converter's version (aug.txt may or may not repeat train.txt).
STANDARD_SIZES = {
    ("voc", "val"): 1449,
    ("context", "train"): 4996,
    ("context", "val"): 5104,
    ("coco", "train"): 118287,
    ("coco", "val"): 5000,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help=f"dataset root (default: ${DATA_ROOT_ENV}, else ./datasets)")
    parser.add_argument(
        "--dataset",
        action="append",
        choices=sorted(LAYOUTS),
        help="check only this dataset (repeatable; default: every one present under the root)",
    )
    parser.add_argument("--split", action="append", help="check only this split (repeatable; default: all)")
    parser.add_argument(
        "--decode-images", action="store_true", help="decode every image in full to find truncated files (slower)"
    )
    parser.add_argument("--workers", type=int, default=0, help="processes reading files (default: %(default)s)")


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"    {title} ({len(items)}):"] + [f"      {item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"      ... and {len(items) - SHOWN} more")
    return lines


def format_report(report: SplitReport) -> str:
    if report.error:
        return f"  {report.split:<6} PROBLEM: {report.error}"
    status = "ok" if report.ok else "PROBLEMS"
    lines = [
        f"  {report.split:<6} {report.listed:>7} listed {report.images:>7} images {report.labels:>7} labels  {status}"
    ]
    standard = STANDARD_SIZES.get((report.dataset, report.split))
    if standard is not None and report.listed != standard:
        lines.append(
            f"    note: the standard {report.split} split has {standard} images (published numbers are over it)"
        )
    lines += _listing("listed names without an image", report.missing_images)
    lines += _listing("listed names without a label", report.missing_labels)
    lines += _listing("label files without an image", report.unmatched_labels)
    lines += _listing("unusable files", report.bad_files)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    root = data_root(args.data_root)
    datasets = args.dataset or [name for name, layout in LAYOUTS.items() if (root / layout.base).is_dir()]
    if not datasets:
        expected = ", ".join(layout.base for layout in LAYOUTS.values())
        raise UserError(
            f"no dataset found under {root}: expected one of {expected}. Give --data-root or ${DATA_ROOT_ENV}"
        )
    print(f"checking {', '.join(datasets)} under {root}")
    all_ok = True
    for dataset in datasets:
        layout = LAYOUTS[dataset]
        print(f"{dataset} ({layout.base}, {layout.num_classes} classes)")
        for split in args.split or list(layout.splits):
            report = check_split(dataset, str(root), split, args.decode_images, args.workers, progress=True)
            print(format_report(report), flush=True)
            all_ok &= report.ok
    print("all checked splits are complete and valid" if all_ok else "problems found (see above)")
    return 0 if all_ok else 1
