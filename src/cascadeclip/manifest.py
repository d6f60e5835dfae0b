"""The list of files cascade-clip wrote into a folder: only those are ever overwritten or deleted.

A command that writes into a folder the user chose (`segment --out`, `train --run-dir`) first claims the names of
the files it is going to write. A name already taken by a file it did not write (the user's own `cat_overlay.png`,
`config.yaml`, ...) is refused before any work starts; a name it wrote before is its to overwrite. Deleting (an old
checkpoint, `train --force`) only ever touches claimed names.

The list is `<folder>/.cascadeclip-files.json`, rewritten atomically under an exclusive lock on the folder, so that
two commands writing into one folder at once both keep their entries.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .utils import UserError, atomic_write

MANIFEST_NAME = ".cascadeclip-files.json"
_FORMAT = "cascadeclip files"
SHOWN = 3  # foreign files named in a refusal


class Manifest:
    """The files cascade-clip wrote into `folder` (names, not paths: the folder may be moved)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME

    def names(self) -> set[str]:
        """Names of the files claimed in this folder (some may not exist yet, or any more)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as err:
            raise UserError(f"{self.path} cannot be read ({err}); {self._damaged}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("files"), list):
            raise UserError(f"{self.path} is not a list of files cascade-clip wrote; {self._damaged}")
        return {str(name) for name in data["files"]}

    @property
    def _damaged(self) -> str:
        return (
            f"without it no file in {self.folder} can be told apart from yours. Move the files you want to keep, "
            "delete the folder, or choose another"
        )

    def refuse_foreign(self, paths: Iterable[Path], what: str, names: set[str] | None = None) -> None:
        """UserError when any of `paths` (files in this folder) exists but was not written by cascade-clip. `what`
        names the command's option for the folder, e.g. "--out"."""
        names = self.names() if names is None else names
        foreign = [p for p in paths if (p.exists() or p.is_symlink()) and p.name not in names]
        if foreign:
            shown = ", ".join(p.name for p in foreign[:SHOWN]) + (" ..." if len(foreign) > SHOWN else "")
            raise UserError(
                f"{len(foreign)} file(s) in {what} {self.folder} would be overwritten but were not written by "
                f"cascade-clip ({shown}); move them, or choose another {what}"
            )

    def claim(self, paths: Iterable[Path], what: str) -> None:
        """Record `paths` (files in this folder) as cascade-clip's, before writing them; UserError, claiming nothing,
        when any of them exists and is not cascade-clip's (see `refuse_foreign`)."""
        paths = list(paths)
        with self._locked():
            names = self.names()
            self.refuse_foreign(paths, what, names)
            added = {p.name for p in paths} - names
            if added:
                self._write(names | added)

    def release(self, paths: Iterable[Path]) -> None:
        """Delete those of `paths` that cascade-clip wrote (others are left alone) and forget them."""
        with self._locked():
            names = self.names()
            gone = {p.name for p in paths if p.name in names}
            for name in gone:
                (self.folder / name).unlink(missing_ok=True)
            if gone:
                self._write(names - gone)

    def adopt(self, paths: Iterable[Path]) -> None:
        """Record existing `paths` as cascade-clip's without checking: for a folder written before manifests
        existed, whose files the caller has recognised by their content."""
        with self._locked():
            self._write(self.names() | {p.name for p in paths})

    def _write(self, names: set[str]) -> None:
        text = json.dumps({"format": _FORMAT, "files": sorted(names)}, indent=1) + "\n"
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the folder (made if missing) for a read-modify-write of the list."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): one command per folder at a time
            yield
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
