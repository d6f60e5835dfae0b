"""`cascade-clip test --suite ov CHECKPOINT`: every open-vocabulary set found under the data root, one table."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cascadeclip.cli.main import main
from cascadeclip.config.presets import get_preset
from cascadeclip.factory import save_model
from cascadeclip.manifest import MANIFEST_NAME
from cascadeclip.modeling.cascade_clip import CascadeCLIP

from conftest import tiny_model_config
from hostile import cli, refused
from tiny_datasets import make_ade150, make_cityscapes, make_voc

# Tiny images and windows for the tiny model; one template per name (150 x 15 prompts take a while on a busy CPU)
FAST = ["test.short_side=64", "test.crop_size=64", "test.stride=53", "classes.templates=single"]


@pytest.fixture(autouse=True)
def no_embedding_files(monkeypatch):
    """Class embeddings come from the checkpoint's (tiny) text tower, never from the authors' 512-d files."""
    monkeypatch.delenv("CASCADECLIP_EMBEDDINGS_DIR", raising=False)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "coco.safetensors"
    save_model(path, CascadeCLIP(tiny_model_config(with_text=True)).eval(), get_preset("coco-inductive").classes)
    return path


def test_suite_evaluates_the_sets_present_and_names_those_absent(tmp_path, checkpoint, capsys):
    root = tmp_path / "data"
    make_ade150(root, {"val": ["ADE_val_00000001", "ADE_val_00000002"]})
    make_voc(root, {"val": ["v1", "v2", "v3"]})
    make_cityscapes(root, {"val": {"ulm": ["ulm_000000_000019"]}})
    out = tmp_path / "ov.json"
    argv = ["test", "--suite", "ov", str(checkpoint), "--data-root", str(root), "--out", str(out), "--workers", "0"]
    assert main([*argv, *FAST]) == 0
    printed = capsys.readouterr().out
    for name, classes, images in (("ade150", 150, 2), ("voc", 20, 3), ("voc21", 21, 3), ("cityscapes", 19, 1)):
        assert re.search(rf"^{name} +{classes} +{images} +\d+\.\d\d +\d+\.\d\d$", printed, re.M), name
    assert "absent: ade847 (ADE20K_2021_17_01/annotations_detectron2/validation not found), pc459 (" in printed
    assert "voc21: 'background' is predicted where no other class reaches probability 0.5" in printed
    record = json.loads(out.read_text())
    assert [row["set"] for row in record["sets"]] == ["ade150", "voc", "voc21", "cityscapes"]  # the papers' order
    assert [a["set"] for a in record["absent"]] == ["ade847", "pc459", "context", "context60"]
    assert record["sets"][2]["background"]["threshold"] == 0.5 and record["sets"][0]["background"] is None

    # Each row is what `cascade-clip test coco-to-<set>` gives for that set alone.
    single = tmp_path / "single.json"
    for row in record["sets"]:
        argv = ["test", f"coco-to-{row['set']}", "--checkpoint", str(checkpoint), "--data-root", str(root)]
        # --overwrite: each set's results replace the previous set's
        assert main([*argv, "--out", str(single), "--overwrite", "--workers", "0", *FAST]) == 0
        alone = json.loads(single.read_text())
        assert (alone["mIoU"], alone["per_class"]) == (row["mIoU"], row["per_class"]), row["set"]
    capsys.readouterr()


def test_suite_errors_before_any_evaluation(tmp_path, checkpoint, capsys):
    root = tmp_path / "data"
    root.mkdir()
    suite = ["test", "--suite", "ov", str(checkpoint), "--data-root", str(root)]
    assert main(suite) == 2
    err = capsys.readouterr().err
    assert "no set of the ov suite found under" in err and "ADEChallengeData2016/annotations/validation" in err
    assert main([*suite, "--split", "train"]) == 2
    assert "ade847: no train split" in capsys.readouterr().err
    make_voc(root, {"val": ["v1"]})
    assert main([*suite, "--checkpoint", str(checkpoint)]) == 2
    assert "with --suite the checkpoint is the argument" in capsys.readouterr().err
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()  # labels there, split not listable
    assert main(suite) == 2
    err = capsys.readouterr().err
    assert "split file" in err and "val.txt not found" in err and "Traceback" not in err
    assert main(["test", "voc-inductive", "--data-root", str(root)]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err


def test_suite_checks_its_outputs_and_the_checkpoint_before_evaluating(tmp_path, checkpoint, capsys):
    root, show, afile = tmp_path / "data", tmp_path / "show", tmp_path / "afile"
    make_voc(root, {"val": ["v1"]})
    afile.write_text("the user's")
    suite = ["test", "--suite", "ov", checkpoint, "--data-root", root, "--workers", "0", *FAST]
    refused(capsys, *suite, "--out", tmp_path, match="is a folder")
    refused(capsys, *suite, "--out", afile / "ov.json", match="afile is a file, not a folder")
    refused(capsys, *suite, "--show-dir", afile, match="is a file, not a folder")
    refused(capsys, *suite, "--device", "bogus", match="'bogus' is not a device name")
    # Each set's pictures go to <show-dir>/<set>/: a file of the user's in the way is refused, not overwritten.
    (show / "voc").mkdir(parents=True)
    (show / "voc" / "v1.png").write_text("the user's")
    refused(capsys, *suite, "--show-dir", show, match="would be overwritten but were not written by cascade-clip")
    (show / "voc" / "v1.png").unlink()
    (show / "voc21").write_text("the user's")
    refused(capsys, *suite, "--show-dir", show, match="voc21 is a file, not a folder")
    # A model edit the file contradicts (heads: the tensor shapes do not show it).
    refused(capsys, *suite, "model.head.heads=2", match="model.head.heads: file 4, configuration 2")
    assert afile.read_text() == (show / "voc21").read_text() == "the user's"
    (show / "voc21").unlink()
    for _ in range(2):  # the second run overwrites the pictures the first one wrote
        assert cli(capsys, *suite, "--show-dir", show)[0] == 0
    assert {p.name for p in (show / "voc21").iterdir()} == {"v1.png", MANIFEST_NAME}
