"""What many modules share: the error type for bad input, atomic writes, the cache folder, the ignore label.

Imports nothing heavy: the command line imports it before it chooses PyTorch's allocator options.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

# Label of pixels that are not scored and not trained on (VOC's object borders, Context's and VOC's background after
# the reduction of label 0, COCO-Stuff's unlabelled pixels), as in the authors' data; also the background of
# `cascade-clip segment`'s label maps.
IGNORE_INDEX = 255
# Class sets of more than 255 classes (ADE20K-847, Pascal Context-459) need 16-bit labels, in which 255 is a class;
# their unscored pixels are 65535, as in the 16-bit label files of those benchmarks. Training reads 8-bit labels only.
WIDE_IGNORE_INDEX = 65535


def ignore_index_for(num_classes: int) -> int:
    """The label value of unscored pixels for a class set of this size: 255, or 65535 above 255 classes."""
    return IGNORE_INDEX if num_classes <= IGNORE_INDEX else WIDE_IGNORE_INDEX


CACHE_ENV = "CASCADECLIP_CACHE"


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class UserError(ValueError):
    """Bad input from the user (a file, an option, a configuration). The message says which and what to do.

    The command line prints its message, without a traceback, and exits with 2.
    """


# Errors of a write that the user can act on (space, permissions, a read-only disk), as opposed to bugs.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)
# Temporary files of `atomic_write` are named `.cascadeclip-XXXXXXXX.tmp` (25 bytes): short, so that any name that
# fits the file system fits its temporary file too.
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".cascadeclip-", ".tmp"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it over `path`.

    Nothing is left behind when the write fails: `path` keeps its previous content (or stays absent). A full disk
    or a folder that cannot be written raises UserError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            raise UserError(
                f"no space left to write {path} ({err.strerror}); nothing of it was kept. Free some space, or write "
                "somewhere else, and run again"
            ) from err
        if isinstance(err, OSError) and err.errno in _NOT_ALLOWED:
            raise UserError(f"cannot write {path} ({err.strerror}); choose a location you can write to") from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """The cache folder: $CASCADECLIP_CACHE, else $XDG_CACHE_HOME/cascadeclip, else ~/.cache/cascadeclip."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cascadeclip"
