"""Helpers of the hostile-input tests (tests/test_hostile_*.py): run the command line in-process and check that a
refusal is one line, without a traceback, with the expected exit status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cascadeclip.cli.main import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `cascade-clip ARGV...`."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def refused(capsys, *argv, match: str, status: int = 2) -> str:
    """Run the command, check it failed with `status` and one error line holding `match`; return that line."""
    code, _, err = cli(capsys, *argv)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == status and "Traceback" not in err and len(errors) == 1, (code, err)
    assert match in errors[0], errors[0]
    return errors[0]


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A random RGB image of (width, height) `size`, in the format its suffix says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
