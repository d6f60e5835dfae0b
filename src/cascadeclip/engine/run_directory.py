"""A training run's folder: resolved config, checkpoints, training state, log, curves, status.

    <run>/config.yaml                 the resolved configuration
    <run>/iter_<t>.safetensors        model weights after t iterations (our format; `cascade-clip test` loads it)
    <run>/iter_<t>.state.pt           optimiser, gradient scaler and RNG states to resume from iteration t
    <run>/log.jsonl                   one JSON record per logged iteration
    <run>/curves.png                  loss and learning-rate curves, redrawn at every checkpoint
    <run>/status.json                 {"finished": bool, "iteration": t}
    <run>/kernel_choices.json         the kernels the run's steps ran on (train.kernels: chosen), kept on resume

Every file is written to a temporary name and renamed, so a crash never leaves a half-written checkpoint. The state
file holds only tensors and plain values and is read with `torch.load(weights_only=True)`: no code is unpickled.

The folder may hold other files: the run claims its names first (`manifest.Manifest`), refuses to start when one of
them is taken by a file it did not write (the user's own `config.yaml`, say), and deletes only files it wrote
(old checkpoints, everything with `--force`). Resuming takes the newest checkpoint whose two files read back whole;
a damaged newer one is reported and passed over, and a cut-short last line of the log (a crash while appending) is
dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..manifest import Manifest
from ..utils import UserError, atomic_write
from .curves import parse_log_line

_CHECKPOINT = re.compile(r"^iter_(\d+)\.safetensors$")
_CHECKPOINT_FILE = re.compile(r"^iter_(\d+)\.(safetensors|state\.pt)$")  # weights or training state
_LOCK_NAME = ".cascadeclip-run.lock"


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.log = self.path / "log.jsonl"
        self.curves = self.path / "curves.png"
        self.status_file = self.path / "status.json"
        self.kernel_choices = self.path / "kernel_choices.json"
        self.manifest = Manifest(self.path)

    def model_path(self, iteration: int) -> Path:
        return self.path / f"iter_{iteration}.safetensors"

    def state_path(self, iteration: int) -> Path:
        return self.path / f"iter_{iteration}.state.pt"

    def _checkpoint_files(self) -> list[tuple[int, Path]]:
        """(iteration, path) of every file here named as a checkpoint's weights or training state, whoever wrote it
        (a run's iterations may be too many to list, the files present are few)."""
        if not self.path.is_dir():
            return []
        return [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _CHECKPOINT_FILE.match(p.name))]

    def checkpoints(self) -> list[int]:
        """Iterations with both weights and training state written by this run, ascending."""
        if not self.path.is_dir():
            return []
        ours = self.manifest.names()
        iterations = (int(m.group(1)) for m in map(_CHECKPOINT.match, ours) if m)
        return sorted(
            t
            for t in iterations
            if self.state_path(t).name in ours and self.model_path(t).is_file() and self.state_path(t).is_file()
        )

    def status(self) -> dict[str, Any]:
        try:
            status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def prepare(self, resume: bool, force: bool, planned: Callable[[int], bool] = lambda iteration: False) -> int:
        """Make the folder ready; returns the iteration to resume from (0 for a new run).

        A folder holding a run is refused unless `resume` (continue it) or `force` (start over, deleting the run's
        files); `resume` on a folder without a run is refused too. `planned(t)`: whether the run will write a
        checkpoint at iteration t, whose names must not be taken by files of the user's.
        """
        holds_run = self.holds_run()
        if holds_run and not resume and not force:
            status = self.status()
            what = (
                "a finished run" if status.get("finished") else f"a run stopped at iteration {status.get('iteration')}"
            )
            raise UserError(
                f"{self.path} already holds {what}. Use --resume to continue it, --force to delete it and start "
                "over, or choose another --run-dir"
            )
        if resume:
            self.check_resumable()
        files = [self.config, self.log, self.curves, self.status_file, self.kernel_choices]
        checkpoints = [p for t, p in self._checkpoint_files() if planned(t)]
        self.manifest.refuse_foreign(files + checkpoints, "--run-dir")
        if force and not resume:
            self.clear()
        self.manifest.claim(files, "--run-dir")
        return self._resume_point() if resume else 0

    def holds_run(self) -> bool:
        """Whether a run wrote its status or a checkpoint here."""
        self._adopt_run_written_before_manifests()
        ours = self.manifest.names()
        return self.status_file.name in ours and self.status_file.is_file() or bool(self.checkpoints())

    def check_resumable(self) -> None:
        """UserError when there is no run here to resume (an empty or mistyped folder)."""
        if not self.holds_run():
            raise UserError(
                f"--resume: {self.path} holds no run to resume (no status.json or checkpoint written by a run). Check "
                "--run-dir, or leave out --resume to start a new run"
            )

    def _resume_point(self) -> int:
        """The newest iteration whose weights and state read back whole; damaged newer ones are reported."""
        damaged = []
        for iteration in reversed(self.checkpoints()):
            try:
                with safe_open(str(self.model_path(iteration)), framework="pt"):
                    pass  # the header names every tensor's bytes: a cut-short file fails here
                self.load_state(iteration)
            except Exception as err:  # torch and safetensors raise several kinds on damaged files
                first_line = next(iter(str(err).splitlines()), "")[:80]
                damaged.append(f"iter_{iteration} ({type(err).__name__}{': ' if first_line else ''}{first_line})")
                continue
            if damaged:
                warnings.warn(
                    f"{self.path}: newer checkpoints cannot be read, resuming from iteration {iteration} instead: "
                    + "; ".join(damaged),
                    stacklevel=3,
                )
            return iteration
        problems = f" ({'; '.join(damaged)})" if damaged else ""
        raise UserError(f"{self.path} has no complete checkpoint to resume from{problems}; use --force to start over")

    def _adopt_run_written_before_manifests(self) -> None:
        """A run folder from before the file list: its status file tells it is a run, its files are then the run's."""
        if self.manifest.path.exists() or not self.status_file.is_file():
            return
        status = self.status()
        if set(status) != {"iteration", "finished"}:
            return
        names = (self.config, self.log, self.curves, self.status_file, self.kernel_choices)
        self.manifest.adopt([p for p in self.path.iterdir() if p in names or p.name.startswith("iter_")])

    def clear(self) -> None:
        """Delete this run's files: only the ones a run wrote; anything else in the folder stays (and so does the lock
        of `exclusive`, which a run may be holding)."""
        if self.path.is_dir():
            self.manifest.release(self.path / name for name in self.manifest.names() if name != _LOCK_NAME)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run folder for one run: a second run in the same folder at the same time is refused."""
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): nothing to check with
            yield
            return
        lock_path = self.path / _LOCK_NAME
        self.manifest.claim([lock_path], "--run-dir")
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"another run is writing into {self.path} right now; wait for it, or choose another --run-dir"
                ) from None
            yield

    def claim_checkpoint(self, iteration: int) -> None:
        self.manifest.claim([self.model_path(iteration), self.state_path(iteration)], "--run-dir")

    def save_state(self, iteration: int, state: dict[str, Any]) -> None:
        atomic_write(self.state_path(iteration), lambda tmp: torch.save(state, tmp))

    def load_state(self, iteration: int) -> dict[str, Any]:
        return torch.load(self.state_path(iteration), map_location="cpu", weights_only=True)

    def prune(self, keep: int, keep_weights_of: tuple[int, ...] = ()) -> None:
        """Delete all but the newest `keep` checkpoints; the weights (not the state) of `keep_weights_of` stay."""
        for iteration in self.checkpoints()[:-keep] if keep > 0 else []:
            old = [self.state_path(iteration)]
            if iteration not in keep_weights_of:
                old.append(self.model_path(iteration))
            self.manifest.release(old)

    def write_status(self, iteration: int, finished: bool) -> None:
        text = json.dumps({"iteration": iteration, "finished": finished})
        atomic_write(self.status_file, lambda tmp: tmp.write_text(text))

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed run recomputes them) and lines that do not parse (one cut short
        by a crash while it was appended)."""
        if not self.log.is_file():
            return
        keep, unreadable = [], 0
        for line in self.log.read_text(errors="replace").splitlines():
            record = parse_log_line(line)
            if record is None:
                unreadable += bool(line.strip())
            elif record["iter"] <= iteration:
                keep.append(line)
        if unreadable:
            warnings.warn(f"{self.log}: dropped {unreadable} unreadable line(s) (cut short by a crash?)", stacklevel=3)
        atomic_write(self.log, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))
