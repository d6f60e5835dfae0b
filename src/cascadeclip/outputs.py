"""Output locations checked before any work starts: can this file, or files in this folder, be written?

A command checks every place it will write before it loads a model or reads a dataset, so that a long run never
fails at its end on a typo. What is refused, with the location named: a file where a folder is wanted (and the
reverse), a location inside a file, a folder that cannot be written (read-only, immutable, not permitted), a name
longer than the file system allows, a symbolic link that leads nowhere, and a disk with no space left. A disk that
fills up during the run is reported by `utils.atomic_write`, which keeps nothing of the file it could not finish.

Nothing is created here: a folder that does not exist yet is made by the first write into it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .utils import TEMPORARY_PREFIX, UserError

NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems (ext4, xfs, btrfs, tmpfs, APFS)
MIN_FREE_BYTES = 1 << 20  # less than this free, and even a summary file may not fit


def check_name(name: str, what: str) -> None:
    """UserError when `name` (one path component) is longer than a file system allows."""
    size = len(os.fsencode(name))
    if size > NAME_MAX:
        raise UserError(
            f"{what}: the name {name[:40]}... is {size} bytes long; file systems allow {NAME_MAX}. Use a shorter name"
        )


def check_output_file(
    path: str | Path, what: str, inputs: dict[str, str | Path | None] | None = None, overwrite: bool = False
) -> Path:
    """`path` as a Path when a file can be written there (atomically: a temporary file beside it, then a rename);
    UserError naming `what` (e.g. "--out") otherwise: when it is one of the command's `inputs` (what each is called ->
    its path), which the write would replace, or when it exists and the user did not ask to `overwrite` it (it may
    be their own file, or a result to keep)."""
    path = Path(path).expanduser()
    _check_names(path, what)
    for name, source in (inputs or {}).items():
        if source is not None and path.is_file() and Path(source).is_file() and os.path.samefile(path, source):
            raise UserError(f"{what} {path} is {name} itself, which writing it would replace; give another name")
    if path.is_file() and not overwrite:
        raise UserError(f"{what} {path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the name of a file to write")
    if path.exists() and not path.is_file():  # the rename of a new file would replace the device or pipe itself
        raise UserError(f"{what} {path} is not a regular file (a device, a pipe?); give the name of a file to write")
    if path.is_symlink() and not path.exists():
        raise UserError(
            f"{what} {path} is a symbolic link that leads nowhere (or to itself); remove it or give another"
        )
    _check_folder_can_hold_files(path.parent, what, path)
    return path


def check_output_folder(path: str | Path, what: str) -> Path:
    """`path` as a Path when files can be written into it (it may not exist yet); UserError naming `what` otherwise."""
    path = Path(path).expanduser()
    _check_names(path, what)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a folder")
    _check_folder_can_hold_files(path, what, path)
    return path


def _check_names(path: Path, what: str) -> None:
    for part in path.parts:
        check_name(part, f"{what} {path}")


def _check_folder_can_hold_files(folder: Path, what: str, target: Path) -> None:
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"{what} {target}: {existing} is a symbolic link that leads nowhere (or to itself)")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {target} cannot be created: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=TEMPORARY_PREFIX, suffix=".probe")
    except OSError as err:
        raise UserError(
            f"{what} {target}: cannot write in {existing} ({err.strerror}); choose a location you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)
    if shutil.disk_usage(existing).free < MIN_FREE_BYTES:
        raise UserError(f"{what} {target}: no space left on the disk holding {existing}; free some space first")
