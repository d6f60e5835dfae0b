"""Where outputs go: locations checked before any work, nothing of the user's overwritten or deleted, no stale
result taken for a fresh one, a full disk reported without partial files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cascadeclip.config.presets import get_preset
from cascadeclip.factory import read_openai_clip, save_model
from cascadeclip.manifest import MANIFEST_NAME
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.outputs import check_output_file, check_output_folder
from cascadeclip.utils import TEMPORARY_PREFIX, TEMPORARY_SUFFIX, UserError, atomic_write

from conftest import tiny_model_config
from hostile import cli, refused, write_image
from test_factory import make_openai_archive
from tiny_datasets import make_voc


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))


def segment(checkpoint: Path, *args) -> list:
    return ["segment", *args, "--classes", "cat, grass", "--checkpoint", checkpoint, "--device", "cpu"]


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}"))


# ----------------------------------------------------------------------------------------------------------------
# segment: the user's files are never overwritten; reruns skip only what is really done
# ----------------------------------------------------------------------------------------------------------------


def test_segment_into_the_input_folder_never_takes_the_users_overlay(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "d"
    write_image(folder / "cat.png")
    write_image(folder / "cat_overlay.png", seed=1)  # the user's own file, named like an output
    before = (folder / "cat_overlay.png").read_bytes()
    refused(capsys, *segment(tiny_checkpoint, folder, "--out", folder), match="not written by cascade-clip")
    assert (folder / "cat_overlay.png").read_bytes() == before and not (folder / "cat.json").exists()

    # Into another folder, the user's overlay is an input like any other image.
    code, out, _ = cli(capsys, *segment(tiny_checkpoint, folder, "--out", tmp_path / "out"))
    assert code == 0 and "segmented 2 image(s)" in out
    assert (tmp_path / "out" / "cat_overlay_overlay.png").is_file()


def test_segment_refuses_to_overwrite_a_users_json(tiny_checkpoint, tmp_path, capsys):
    write_image(tmp_path / "d" / "cat.png")
    (tmp_path / "d" / "cat.json").write_text('{"my": "annotation"}')
    refused(capsys, *segment(tiny_checkpoint, tmp_path / "d", "--out", tmp_path / "d"), match="(cat.json)")
    assert json.loads((tmp_path / "d" / "cat.json").read_text()) == {"my": "annotation"}


def test_segment_rerun_into_the_input_folder_skips_its_own_outputs(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "d"
    write_image(folder / "cat.png")
    assert cli(capsys, *segment(tiny_checkpoint, folder, "--out", folder))[0] == 0
    code, out, err = cli(capsys, *segment(tiny_checkpoint, folder, "--out", folder))
    assert code == 0 and "segmented 0 of 1 image(s)" in out and "1 already done" in out
    written = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    assert written == ["cat.json", "cat_labels.png", "cat_overlay.png"]


def test_a_replaced_image_or_checkpoint_is_segmented_again(tiny_checkpoint, tmp_path, capsys):
    image, out = write_image(tmp_path / "cat.png"), tmp_path / "out"
    weights = tmp_path / "w.safetensors"
    shutil.copy(tiny_checkpoint, weights)
    assert cli(capsys, *segment(weights, image, "--out", out))[0] == 0
    assert "1 already done" in cli(capsys, *segment(weights, image, "--out", out))[1]

    write_image(image, size=(50, 30), seed=7)  # another picture at the same path
    code, printed, _ = cli(capsys, *segment(weights, image, "--out", out))
    assert code == 0 and "already done" not in printed
    assert json.loads((out / "cat.json").read_text())["width"] == 50

    # Weights of another model at the same path: redone. The same bytes again under a new time: still done.
    torch.manual_seed(1)
    save_model(weights, CascadeCLIP(tiny_model_config(with_text=True)), get_preset("voc-inductive").classes)
    assert "already done" not in cli(capsys, *segment(weights, image, "--out", out))[1]
    os.utime(weights, ns=(1, 1))
    assert "1 already done" in cli(capsys, *segment(weights, image, "--out", out))[1]


def test_a_copy_that_keeps_size_and_modification_time_is_not_taken_as_done(tiny_checkpoint, tmp_path, capsys):
    """`cp -p` keeps the modification time: the skip must look at the bytes."""
    image, out, weights = write_image(tmp_path / "cat.png"), tmp_path / "out", tmp_path / "w.safetensors"
    shutil.copy(tiny_checkpoint, weights)
    assert cli(capsys, *segment(weights, image, "--out", out))[0] == 0
    stamps = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (image, weights)}

    other = write_image(tmp_path / "other.png", seed=7)  # same size in bytes (raw random pixels, same format)
    assert other.stat().st_size == stamps[image][0]
    shutil.copy(other, image)
    os.utime(image, ns=(stamps[image][1], stamps[image][1]))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == stamps[image]
    code, printed, _ = cli(capsys, *segment(weights, image, "--out", out))
    assert code == 0 and "already done" not in printed

    data = bytearray(weights.read_bytes())  # another weight value, same size and time
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stamps[weights][1], stamps[weights][1]))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == stamps[weights]
    code, printed, _ = cli(capsys, *segment(weights, image, "--out", out))
    assert code == 0 and "already done" not in printed
    assert "1 already done" in cli(capsys, *segment(weights, image, "--out", out))[1]  # unchanged now: skipped


def test_a_rerun_counts_only_the_images_it_segmented_now(tiny_checkpoint, tmp_path, capsys):
    folder, out = tmp_path / "d", tmp_path / "out"
    write_image(folder / "cat.png")
    code, printed, _ = cli(capsys, *segment(tiny_checkpoint, folder, "--out", out))
    assert code == 0 and f"segmented 1 image(s) into {out}:" in printed  # nothing skipped: no "of"
    write_image(folder / "dog.png", seed=3)
    code, printed, _ = cli(capsys, *segment(tiny_checkpoint, folder, "--out", out))
    assert code == 0 and f"segmented 1 of 2 image(s) into {out} (1 already done, skipped):" in printed


def test_a_damaged_manifest_stops_before_anything_is_overwritten(tiny_checkpoint, tmp_path, capsys):
    image, out = write_image(tmp_path / "cat.png"), tmp_path / "out"
    assert cli(capsys, *segment(tiny_checkpoint, image, "--out", out))[0] == 0
    (out / MANIFEST_NAME).write_text("{not json")
    refused(capsys, *segment(tiny_checkpoint, image, "--out", out), match="cannot be read")


# ----------------------------------------------------------------------------------------------------------------
# Output locations that cannot be used: refused before any work, for every command
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def afile(tmp_path) -> Path:
    path = tmp_path / "afile"
    path.write_text("the user's")
    return path


def test_segment_out_unusable(tiny_checkpoint, tmp_path, afile, capsys):
    image = write_image(tmp_path / "cat.png")
    refused(capsys, *segment(tiny_checkpoint, image, "--out", afile), match="is a file, not a folder")
    refused(capsys, *segment(tiny_checkpoint, image, "--out", afile / "sub"), match="afile is a file, not a folder")
    assert afile.read_text() == "the user's"


def test_segment_output_name_too_long_is_refused_up_front(tiny_checkpoint, tmp_path, capsys):
    image = write_image(tmp_path / ("x" * 245 + ".png"))  # fits; its "_overlay.png" output does not
    refused(capsys, *segment(tiny_checkpoint, image, "--out", tmp_path / "out"), match="bytes long")
    assert not (tmp_path / "out").exists()


def test_convert_test_bench_demo_outputs_unusable(tiny_checkpoint, tmp_path, afile, capsys):
    refused(capsys, "convert", tiny_checkpoint, tmp_path, match="must end in .safetensors")
    folder = tmp_path / "adir.safetensors"
    folder.mkdir()
    refused(capsys, "convert", tiny_checkpoint, folder, match="is a folder")
    refused(capsys, "convert", tiny_checkpoint, afile / "x.safetensors", match="afile is a file, not a folder")
    test = ["test", "voc-inductive", "--checkpoint", tiny_checkpoint, "--data-root", tmp_path / "none"]
    refused(capsys, *test, "--out", tmp_path, match="is a folder")
    refused(capsys, *test, "--out", afile / "r.json", match="afile is a file, not a folder")
    refused(capsys, *test, "--show-dir", afile, match="is a file, not a folder")
    refused(capsys, "bench", "voc-inductive", "--json", tmp_path, match="is a folder")
    refused(capsys, "bench", "voc-inductive", "--json", afile / "b.json", match="afile is a file")
    refused(capsys, "bench", "voc-inductive", "--json", afile, match="exists; pass --overwrite to replace it")
    refused(capsys, "demo", "--out", afile, match="is a file, not a folder")
    refused(capsys, "demo", "--cache", afile, match="is a file, not a folder")
    refused(capsys, "train", "voc-inductive", "--run-dir", afile, match="is a file, not a folder")
    assert afile.read_text() == "the user's"


def test_name_too_long_and_symlink_loops(tmp_path):
    with pytest.raises(UserError, match="bytes long"):
        check_output_file(tmp_path / ("y" * 256), "--out")
    check_output_file(tmp_path / ("y" * 255), "--out")  # the longest name allowed: its temporary name is short
    atomic_write(tmp_path / ("y" * 255), lambda tmp: tmp.write_text("fits"))
    assert (tmp_path / ("y" * 255)).read_text() == "fits"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UserError, match="symbolic link"):
        check_output_folder(tmp_path / "loop" / "out", "--out")
    with pytest.raises(UserError, match="symbolic link"):
        check_output_file(tmp_path / "loop", "--out")


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}): needs root")


@pytest.fixture
def mounted(tmp_path):
    """mount(options) -> a fresh tmpfs folder; unmounted after the test."""
    folders = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"mnt{len(folders)}"
        _mount_tmpfs(folder, options)
        folders.append(folder)
        return folder

    yield mount
    for folder in folders:
        subprocess.run(["umount", str(folder)], check=False)


def test_read_only_and_immutable_folders_are_refused(tiny_checkpoint, tmp_path, mounted, capsys):
    image = write_image(tmp_path / "cat.png")
    read_only = mounted("ro,size=1m")
    refused(capsys, *segment(tiny_checkpoint, image, "--out", read_only / "out"), match="Read-only file system")

    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work here (needs root and a file system with inode flags, e.g. ext4)")
    try:
        refused(capsys, *segment(tiny_checkpoint, image, "--out", frozen), match="Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


def test_a_full_disk_is_reported_and_leaves_no_partial_file(tiny_checkpoint, tmp_path, mounted, capsys):
    image = write_image(tmp_path / "noise.png", size=(1200, 900))  # random pixels: the overlay PNG is over 2 MB
    nearly_full = mounted("size=1600k")
    line = refused(capsys, *segment(tiny_checkpoint, image, "--out", nearly_full), match="no space left to write")
    assert "nothing of it was kept" in line and not leftovers(nearly_full)
    assert not (nearly_full / "noise.json").exists()  # the image is not taken as done
    assert not (nearly_full / "noise_overlay.png").exists()

    full = mounted("size=64k")
    refused(capsys, *segment(tiny_checkpoint, image, "--out", full), match="no space left on the disk")


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="no space left to write .*results.json"):
        atomic_write(target, write)
    assert target.read_text() == "old" and not leftovers(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# convert and test: an existing output file is replaced only when --overwrite asks for it
# ----------------------------------------------------------------------------------------------------------------


def test_convert_refuses_to_replace_an_existing_file_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    source, victim = tmp_path / "tiny-clip.pt", tmp_path / "victim.safetensors"
    make_openai_archive(source)
    shutil.copy(tiny_checkpoint, victim)  # a trained checkpoint of the user's
    message = f"output {victim} exists; pass --overwrite to replace it"
    refused(capsys, "convert", source, victim, match=message)
    refused(capsys, "convert", tmp_path / "missing.pth", victim, match=message)  # checked before the source is read
    assert victim.read_bytes() == tiny_checkpoint.read_bytes()
    assert cli(capsys, "convert", source, victim, "--overwrite")[0] == 0
    assert read_openai_clip(victim).keys() == read_openai_clip(source).keys()


def test_test_refuses_to_replace_an_existing_out_file_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's")
    message = f"--out {notes} exists; pass --overwrite to replace it"
    missing = ["--checkpoint", tmp_path / "none.safetensors", "--data-root", tmp_path / "none"]
    # Checked before the checkpoint or the data is looked at: neither exists here.
    refused(capsys, "test", "voc-inductive", *missing, "--out", notes, match=message)
    refused(capsys, "test", "--suite", "ov", tmp_path / "none.safetensors", "--out", notes, match=message)
    assert notes.read_text() == "the user's"

    make_voc(tmp_path / "data", {"val": ["a"]})
    fast = ["test.short_side=64", "test.crop_size=64", "test.stride=48", "--device", "cpu"]
    argv = ["test", "voc-inductive", "--checkpoint", tiny_checkpoint, "--data-root", tmp_path / "data", *fast]
    assert cli(capsys, *argv, "--out", notes, "--overwrite")[0] == 0
    assert json.loads(notes.read_text())["images"] == 1
