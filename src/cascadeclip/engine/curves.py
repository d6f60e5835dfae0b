"""Training curves: the JSON-lines log of a run drawn as loss and learning-rate plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_write  # noqa: E402


def parse_log_line(line: str) -> dict | None:
    """A log line's record, or None when it is not a JSON object with an integer "iter" (e.g. a line cut short by a
    crash while it was appended)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("iter"), int) else None


def read_log(path: Path) -> list[dict]:
    """The readable records of a run's JSON-lines log; [] when there is none."""
    if not path.is_file():
        return []
    records = (parse_log_line(line) for line in path.read_text(errors="replace").splitlines())
    return [r for r in records if r is not None]


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Write a PNG with the loss terms (left) and the learning rate (right) against the iteration."""
    records = [r for r in read_log(log_path) if "loss" in r]
    if not records:
        return
    iters = [r["iter"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "total"), ("loss_focal", "focal x100"), ("loss_dice", "dice")):
        ax_loss.plot(iters, [r[key] for r in records], label=label, linewidth=1.2)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    ax_lr.plot(iters, [r["lr"] for r in records], color="tab:green")
    ax_lr.set_xlabel("iteration")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
