"""A sweep of hostile inputs beyond those the other hostile tests name, across the commands: each case builds its
files, runs the command line, and checks the exit status and the one line that names the input (or, for an odd but
valid input, that the command did its job)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascadeclip.cli.main import describe_unexpected, main

from hostile import write_image
from tiny_datasets import make_voc


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CASCADECLIP_EMBEDDINGS_DIR", raising=False)


class Files:
    """The files a case works with, under one temporary folder: an image, a tiny VOC dataset, the checkpoint."""

    def __init__(self, root: Path, checkpoint: Path):
        self.root, self.checkpoint = root, checkpoint
        self.image = write_image(root / "cat.png")
        make_voc(root / "data", {"val": ["a"]})
        self.voc = root / "data" / "VOCdevkit" / "VOC2012"

    def path(self, name: str, text: str | bytes | None = None) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        return path

    def picture(self, name: str, image: Image.Image, **save) -> Path:
        path = self.path(name)
        image.save(path, **save)
        return path

    def segment(self, *inputs, classes: str = "cat, grass", checkpoint: Path | None = None, out: str = "out"):
        weights = checkpoint or self.checkpoint
        return ["segment", *inputs, "--classes", classes, "--checkpoint", weights, "--out", self.root / out]

    def test(self, *extra, config: str | Path = "voc-inductive") -> list:
        fast = ["test.short_side=64", "test.crop_size=64", "test.stride=48"]
        data = ["--data-root", self.root / "data", "--device", "cpu"]
        return ["test", config, "--checkpoint", self.checkpoint, *data, *fast, *extra]


def _npy(f: Files, name: str, array: np.ndarray) -> Path:
    np.save(f.path(name), array)
    return f.path(name)


def _symlink_loop(f: Files) -> Path:
    os.symlink(f.root / "loop_b", f.root / "loop_a")
    os.symlink(f.root / "loop_a", f.root / "loop_b")
    return f.root / "loop_a"


def _dataset_file(f: Files, classes: str) -> str:
    text = f"folder: x\nsplits: {{val: {{images: im, labels: lb}}}}\nclasses: {classes}\n"
    return f"classes.dataset={f.path('mine_dataset.yaml', text)}"


def _animated_gif(f: Files) -> Path:
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    return f.picture("anim.gif", frames[0], save_all=True, append_images=frames[1:])


def _relabel(f: Files, image: Image.Image) -> None:
    image.save(f.voc / "SegmentationClass" / "a.png")


def _val_split(f: Files, text: str) -> None:
    (f.voc / "ImageSets" / "Segmentation" / "val.txt").write_text(text)


def _show_dir_with_a_users_picture(f: Files) -> Path:
    f.path("show/a.png", "my own notes")  # named like the picture of sample "a"
    return f.root / "show"


SEGMENTED = "segmented 1 image(s)"

# (id, argv built from the case's files, exit status, text in the error line, or in stdout when the status is 0)
CASES: list[tuple[str, Callable[[Files], list], int, str]] = [
    # segment: class names
    ("segment classes all empty", lambda f: f.segment(f.image, classes=" , "), 2, "is empty"),
    ("segment classes repeated in another case", lambda f: f.segment(f.image, classes="cat, Cat"), 2, "given twice"),
    (
        "segment --classes-file is a folder",
        lambda f: [*f.segment(f.image)[:2], "--classes-file", f.root, *f.segment(f.image)[4:]],
        2,
        "is a folder",
    ),
    (
        "segment --classes-file not UTF-8",
        lambda f: [*f.segment(f.image)[:2], "--classes-file", f.path("n.txt", b"\xff\xfe\x81cat\n"), "--out", f.root],
        2,
        "cannot read the class file",
    ),
    (
        "segment --classes-file of blank lines",
        lambda f: ["segment", f.image, "--classes-file", f.path("n.txt", "\n \n"), "--out", f.root / "o"],
        2,
        "no class names given",
    ),
    ("segment class name of 5000 characters", lambda f: f.segment(f.image, classes="a" * 5000), 2, "5000 characters"),
    (
        "segment 300 classes",
        lambda f: f.segment(f.image, classes=", ".join(f"c{i}" for i in range(300))),
        2,
        "at most 255 fit",
    ),
    # segment: images of odd modes, sizes and depths (valid: segmented)
    (
        "segment 16-bit grey PNG",
        lambda f: f.segment(f.picture("g16.png", Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40)))),
        0,
        SEGMENTED,
    ),
    (
        "segment CMYK JPEG",
        lambda f: f.segment(f.picture("c.jpg", Image.new("CMYK", (40, 30), (9, 99, 0, 9)))),
        0,
        SEGMENTED,
    ),
    ("segment 1x1 image", lambda f: f.segment(f.picture("one.png", Image.new("RGB", (1, 1)))), 0, SEGMENTED),
    ("segment 1-bit image", lambda f: f.segment(f.picture("bw.png", Image.new("1", (40, 30)))), 0, SEGMENTED),
    (
        "segment transparent grey+alpha",
        lambda f: f.segment(f.picture("la.png", Image.new("LA", (40, 30)))),
        0,
        SEGMENTED,
    ),
    ("segment animated GIF", lambda f: f.segment(_animated_gif(f)), 0, SEGMENTED),
    (
        "segment 32-bit float TIFF",
        lambda f: f.segment(f.picture("f.tif", Image.fromarray(np.random.rand(30, 40).astype(np.float32)))),
        0,
        SEGMENTED,
    ),
    # segment: inputs and outputs that cannot be used
    ("segment text file named .png", lambda f: f.segment(f.path("fake.png", "hello")), 2, "cannot be read as an image"),
    ("segment empty folder", lambda f: f.segment(f.path("empty/x.txt", "").parent), 2, "holds no images"),
    ("segment --background nan", lambda f: [*f.segment(f.image), "--background", "nan"], 2, "between 0 and 1"),
    (
        "segment 0-byte checkpoint",
        lambda f: f.segment(f.image, checkpoint=f.path("zero.safetensors", b"")),
        2,
        "zero.safetensors as safetensors",
    ),
    ("segment --out a symlink loop", lambda f: f.segment(f.image, out=_symlink_loop(f).name), 2, "leads nowhere"),
    ("segment glob over a symlink loop", lambda f: f.segment(str(_symlink_loop(f)) + "*"), 2, "no image files match"),
    (
        "segment same name in two folders",
        lambda f: f.segment(f.image, write_image(f.root / "sub" / "cat.png")),
        2,
        "would write the same outputs (cat_*)",
    ),
    # test: options, outputs, configuration files and overrides
    (
        "test 5-row embeddings for 20 classes",
        lambda f: f.test(f"classes.text_embeddings={_npy(f, 'five.npy', np.ones((5, 32), np.float32))}"),
        2,
        "five.npy: 5 rows of class embeddings, but the configuration has 20 classes",
    ),
    (
        "test --device cuda without a GPU",
        lambda f: f.test("--device", "cuda"),
        2,
        "--device cuda: PyTorch sees no CUDA",
    ),
    (
        "test --show-dir holding a user's a.png",
        lambda f: f.test("--show-dir", _show_dir_with_a_users_picture(f)),
        2,
        "not written by cascade-clip (a.png)",
    ),
    (
        "test --out equal to --show-dir",
        lambda f: f.test("--out", f.root / "s", "--show-dir", f.root / "s"),
        2,
        "is also --show-dir",
    ),
    ("test --out is the checkpoint", lambda f: f.test("--out", f.checkpoint), 2, "is --checkpoint itself"),
    (
        "test config YAML not UTF-8",
        lambda f: f.test(config=f.path("c.yaml", b"\x00\xff\xfe")),
        2,
        "cannot read config file",
    ),
    ("test config YAML empty", lambda f: f.test(config=f.path("c.yaml", "")), 2, "c.yaml is empty"),
    ("test config YAML a list", lambda f: f.test(config=f.path("c.yaml", "- a\n")), 2, "must hold a mapping"),
    (
        "test config YAML misspelt preset",
        lambda f: f.test(config=f.path("c.yaml", "preset: voc-inductiv\n")),
        2,
        "unknown configuration 'voc-inductiv'",
    ),
    ("test override with broken YAML", lambda f: f.test("train.betas=[0.9"), 2, "the value is not valid YAML"),
    ("test override without =", lambda f: f.test("train.iters"), 2, "train.iters (an override is section.field=value)"),
    ("test override float for int", lambda f: f.test("test.stride=1.5"), 2, "test.stride: expected int, got 1.5"),
    # test: datasets
    ("test split that does not exist", lambda f: f.test("--split", "bogus"), 2, "voc has no split 'bogus'"),
    (
        "test label of another size",
        lambda f: _relabel(f, Image.new("L", (7, 5))) or f.test(),
        2,
        "is 7x5 but its image is 30x20",
    ),
    ("test RGB label", lambda f: _relabel(f, Image.new("RGB", (20, 30))) or f.test(), 2, "has image mode RGB"),
    (
        "test split lists a missing image",
        lambda f: _val_split(f, "a\nnot_there\n") or f.test(),
        2,
        "not_there.jpg not found",
    ),
    ("test empty split file", lambda f: _val_split(f, "") or f.test(), 2, "val split under"),
    ("dataset file repeats a name", lambda f: f.test(_dataset_file(f, "{names: [a, a]}")), 2, "names must be unique"),
    (
        "dataset file unseen name not a class",
        lambda f: f.test(_dataset_file(f, "{names: [a, b], unseen: [zebra]}")),
        2,
        "'zebra' is not one of the 2 class names",
    ),
    (
        "test --suite ov with no set present",
        lambda f: [
            "test",
            "--suite",
            "ov",
            f.checkpoint,
            "--data-root",
            f.path("empty/x", "").parent,
            "--device",
            "cpu",
        ],
        2,
        "no set of the ov suite found",
    ),
    # check-data, convert, bench, demo, train
    (
        "check-data dataset file missing",
        lambda f: ["check-data", "--dataset", f.root / "no.yaml"],
        2,
        "no.yaml not found",
    ),
    (
        "check-data root without datasets",
        lambda f: ["check-data", "--data-root", f.root / "nothing"],
        2,
        "no dataset found under",
    ),
    ("convert to a .pt name", lambda f: ["convert", f.checkpoint, f.root / "x.pt"], 2, "must end in .safetensors"),
    ("convert onto its source", lambda f: ["convert", f.checkpoint, f.checkpoint], 2, "is the source itself"),
    (
        "convert a .pth holding a list",
        lambda f: torch.save([1, 2], f.root / "l.pth") or ["convert", f.root / "l.pth", f.root / "y.safetensors"],
        2,
        "expected a dict with 'state_dict'",
    ),
    (
        "bench --json onto its config file",
        lambda f: ["bench", f.path("b.yaml", "preset: voc-inductive\n"), "--json", f.root / "b.yaml"],
        2,
        "is the configuration file itself",
    ),
    ("demo --seed -1", lambda f: ["demo", "--smoke", "--seed", "-1", "--out", f.root / "d"], 2, "must be 0 or more"),
    (
        "export to a .pt name",
        lambda f: ["export", f.root / "m.pt", "--checkpoint", f.checkpoint],
        2,
        "must end in .onnx",
    ),
    (
        "export --overwrite onto a folder",
        lambda f: ["export", f.path("m.onnx/x", "").parent, "--overwrite", "--checkpoint", f.checkpoint],
        2,
        "m.onnx is a folder",
    ),
    (
        "export checkpoint missing",
        lambda f: ["export", f.root / "m.onnx", "--checkpoint", f.root / "none.safetensors"],
        2,
        "none.safetensors not found",
    ),
    ("app --port 70000", lambda f: ["app", "--port", "70000"], 2, "--port must be between 1 and 65535, got 70000"),
    (
        "train --resume on a folder of other files",
        lambda f: ["train", "voc-inductive", "--run-dir", f.path("r/notes.txt", "x").parent, "--resume"],
        2,
        "holds no run to resume",
    ),
    (
        "train init checkpoint missing",
        lambda f: ["train", "voc-transductive", "train.init=/no/such.safetensors", "--run-dir", f.root / "r"],
        2,
        "no such checkpoint",
    ),
]


@pytest.mark.parametrize("build, status, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input(build, status, expected, tiny_checkpoint, tmp_path, capsys):
    if "cuda" in expected and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    files = Files(tmp_path, tiny_checkpoint)
    checkpoint_bytes = tiny_checkpoint.read_bytes()
    try:
        code = main([str(a) for a in build(files)])
    except SystemExit as exit_info:  # argparse's own one-line errors
        code = exit_info.code
    out, err = capsys.readouterr()
    assert code == status and "Traceback" not in err, (code, err)
    if status == 0:
        assert expected in out, out
    else:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and expected in errors[0], err
    assert tiny_checkpoint.read_bytes() == checkpoint_bytes  # no case may touch the weights


def test_the_cpu_allocator_running_out_is_reported_as_out_of_memory():
    # PyTorch's CPU allocator raises RuntimeError (not MemoryError); `bench --size 100000` did so.
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1 bytes")
    assert describe_unexpected(error).startswith("out of memory; try smaller sizes")
