"""Where the world keeps what it builds once (its dataset, the pretrained tiny CLIP): folders named by a hash of
everything that determines their content, built in a temporary folder and renamed into place when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..utils import cache_dir


def content_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable recipe."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def cached_folder(name: str, recipe: dict[str, Any], build: Callable[[Path], None], root: Path | None = None) -> Path:
    """The folder `<root>/world/<name>-<key>` (root: the project's cache folder by default), calling
    build(tmp_folder) first if it does not exist yet.

    An interrupted build leaves only a temporary folder behind, never a half-written cache entry.
    """
    folder = (root or cache_dir()) / "world" / f"{name}-{content_key(recipe)}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        build(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
