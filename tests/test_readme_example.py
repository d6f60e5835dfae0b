"""The README's "Train on your own data" runs as written: its files are the ones shown, and its commands, run in
order in a fresh folder, end with a segmented image and print what the README says they print."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cascadeclip.cli.main import main
from cascadeclip.config.presets import resolve_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "shapes"


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def line_pattern(line: str) -> str:
    """A regular expression of `line` in which any decimal number stands for one and spaces may vary in number."""
    pattern = ""
    for i, part in enumerate(re.split(r"(\d+\.\d+| +)", line)):  # odd parts: a number or spaces
        pattern += re.escape(part) if i % 2 == 0 else r"\d+\.\d+" if part[0].isdigit() else " +"
    return pattern


SECTION = readme_section("Train on your own data")


def test_the_files_shown_are_the_example_files():
    blocks = code_blocks(SECTION)
    assert ("yaml", (EXAMPLE / "shapes.yaml").read_text()) in blocks
    assert ("", (EXAMPLE / "shapes.txt").read_text()) in blocks


def test_the_example_runs_to_the_end_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = [
        line
        for language, block in code_blocks(SECTION)
        if language == "bash"
        for line in block.replace("\\\n", " ").splitlines()
    ]
    assert [shlex.split(c)[:2] for c in commands] == [
        ["python", "examples/shapes/make_images.py"],
        ["cascade-clip", "check-data"],
        ["cascade-clip", "train"],
        ["cascade-clip", "test"],
        ["cascade-clip", "segment"],
    ]
    printed = ""
    for command in commands:
        args = shlex.split(command)
        if args[0] == "python":
            subprocess.run([sys.executable, *args[1:]], check=True, capture_output=True)
        else:
            assert main(args[1:]) == 0, command
            printed += capsys.readouterr().out
    shown = [block for language, block in code_blocks(SECTION) if "checking shapes under data" in block][0]
    for line in shown.splitlines():  # every line printed, numbers and their alignment aside (a random model's)
        assert re.search(f"^{line_pattern(line)}$", printed, re.M), line
    for name in ("0000_overlay.png", "0000_labels.png", "0000.json"):
        assert (tmp_path / "outputs" / "shapes" / name).is_file()


def test_the_real_run_described_resolves_to_the_example_classes():
    command = re.search(r"`(cascade-clip train voc-inductive .*?)`", SECTION, re.S).group(1)
    overrides = [arg for arg in shlex.split(command) if "=" in arg]
    cfg = resolve_config("voc-inductive", [o.replace("examples/", f"{REPO}/examples/") for o in overrides])
    assert cfg.classes.names == ("circle", "square", "triangle", "ring") and cfg.classes.unseen == (2,)
    assert cfg.train.clip_weights == "ViT-B-16.pt" and cfg.model.image_encoder.prompt_tokens == 10
