"""A training run's folder: resolved config, checkpoints, training state, log, curves, status.

    <run>/config.yaml                 the resolved configuration
    <run>/iter_<t>.safetensors        model weights after t iterations (our format; `cascade-clip test` loads it)
    <run>/iter_<t>.state.pt           optimiser, gradient scaler and RNG states to resume from iteration t
    <run>/log.jsonl                   one JSON record per logged iteration
    <run>/curves.png                  loss and learning-rate curves, redrawn at every checkpoint
    <run>/status.json                 {"finished": bool, "iteration": t}

Every file is written to a temporary name and renamed, so a crash never leaves a half-written checkpoint. The state
file holds only tensors and plain values and is read with `torch.load(weights_only=True)`: no code is unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..utils import UserError, atomic_write

_CHECKPOINT = re.compile(r"^iter_(\d+)\.safetensors$")


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.log = self.path / "log.jsonl"
        self.curves = self.path / "curves.png"
        self.status_file = self.path / "status.json"

    def model_path(self, iteration: int) -> Path:
        return self.path / f"iter_{iteration}.safetensors"

    def state_path(self, iteration: int) -> Path:
        return self.path / f"iter_{iteration}.state.pt"

    def checkpoints(self) -> list[int]:
        """Iterations with both weights and training state, ascending."""
        if not self.path.is_dir():
            return []
        found = (_CHECKPOINT.match(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m and self.state_path(int(m.group(1))).is_file())

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_file.read_text()) if self.status_file.is_file() else {}

    def prepare(self, resume: bool, force: bool) -> int:
        """Make the folder ready; returns the iteration to resume from (0 for a new run).

        A folder holding a run is refused unless `resume` (continue it) or `force` (start over, deleting it).
        """
        holds_run = self.status_file.is_file() or bool(self.checkpoints())
        if holds_run and not resume and not force:
            status = self.status()
            what = (
                "a finished run" if status.get("finished") else f"a run stopped at iteration {status.get('iteration')}"
            )
            raise UserError(
                f"{self.path} already holds {what}. Use --resume to continue it, --force to delete it and start "
                "over, or choose another --run-dir"
            )
        if force and not resume:
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        if resume:
            done = self.checkpoints()
            if not done and holds_run:
                raise UserError(f"{self.path} has no complete checkpoint to resume from; use --force to start over")
            return done[-1] if done else 0
        return 0

    def clear(self) -> None:
        """Delete this run's files (only the ones a run writes; anything else in the folder stays)."""
        if not self.path.is_dir():
            return
        for item in self.path.iterdir():
            if item in (self.config, self.log, self.curves, self.status_file) or item.name.startswith("iter_"):
                item.unlink()

    def save_state(self, iteration: int, state: dict[str, Any]) -> None:
        atomic_write(self.state_path(iteration), lambda tmp: torch.save(state, tmp))

    def load_state(self, iteration: int) -> dict[str, Any]:
        return torch.load(self.state_path(iteration), map_location="cpu", weights_only=True)

    def prune(self, keep: int, keep_weights_of: tuple[int, ...] = ()) -> None:
        """Delete all but the newest `keep` checkpoints; the weights (not the state) of `keep_weights_of` stay."""
        for iteration in self.checkpoints()[:-keep] if keep > 0 else []:
            if iteration not in keep_weights_of:
                self.model_path(iteration).unlink(missing_ok=True)
            self.state_path(iteration).unlink(missing_ok=True)

    def write_status(self, iteration: int, finished: bool) -> None:
        text = json.dumps({"iteration": iteration, "finished": finished})
        atomic_write(self.status_file, lambda tmp: tmp.write_text(text))

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, iteration: int) -> None:
        """Drop records past `iteration`: a resumed run recomputes them."""
        if self.log.is_file():
            keep = [
                line for line in self.log.read_text().splitlines() if line and json.loads(line)["iter"] <= iteration
            ]
            atomic_write(self.log, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))
