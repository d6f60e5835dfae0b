"""Reading the three benchmark layouts, the evaluation dataset, and `cascade-clip check-data`."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from cascadeclip.cli.main import main
from cascadeclip.config.dataset_file import load_dataset
from cascadeclip.config.presets import get_preset
from cascadeclip.data.datasets import list_samples, read_image, read_label
from cascadeclip.data.eval_dataset import eval_dataset
from cascadeclip.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cascadeclip.utils import UserError

from tiny_datasets import make_coco, make_context, make_voc


def reduced(raw: np.ndarray) -> np.ndarray:
    """reduce_zero_label written out independently: 0 -> 255, 255 -> 255, v -> v - 1."""
    out = raw.astype(np.int64) - 1
    out[(raw == 0) | (raw == 255)] = 255
    return out


def test_voc_train_is_train_plus_aug_and_labels_are_reduced(tmp_path):
    raw = make_voc(tmp_path, {"train": ["t1", "t2"], "aug": ["a1"], "val": ["v1", "v2"]})
    train = list_samples("voc", tmp_path, "train")
    assert [s.name for s in train] == ["t1", "t2", "a1"]
    assert [s.label.parent.name for s in train] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"]
    val = list_samples("voc", tmp_path, "val")
    assert [s.name for s in val] == ["v1", "v2"]
    for sample in train + val:
        label = read_label(sample.label, load_dataset("voc"))
        np.testing.assert_array_equal(label, reduced(raw[sample.name]))
        assert read_image(sample.image).shape == (*label.shape, 3)
    label = read_label(val[0].label, load_dataset("voc"))
    assert label[0, 0] == 255 and label[0, 1] == 19  # background ignored; raw 20 = tvmonitor = class 19
    assert set(np.unique(label)) <= set(range(20)) | {255}


def test_context_labels_are_reduced_to_59_classes(tmp_path):
    raw = make_context(tmp_path, {"train": ["c1"], "val": ["c2", "c3"]})
    val = list_samples("context", tmp_path, "val")
    assert [s.name for s in val] == ["c2", "c3"]
    label = read_label(val[0].label, load_dataset("context"))
    np.testing.assert_array_equal(label, reduced(raw["c2"]))
    assert label[0, 1] == 58 and get_preset("context-inductive").classes.names[58] == "wood"


def test_coco_lists_image_files_sorted_and_keeps_labels(tmp_path):
    raw = make_coco(tmp_path, {"train": ["000000000009"], "val": ["000000000285", "000000000139"]})
    val = list_samples("coco", tmp_path, "val")
    assert [s.name for s in val] == ["000000000139", "000000000285"]
    assert val[0].label.name == "000000000139_labelTrainIds.png"
    label = read_label(val[0].label, load_dataset("coco"))
    np.testing.assert_array_equal(label, raw["000000000139"])  # no reduce_zero_label: 0 = person stays 0
    assert label[0, 0] == 0 and label[0, 1] == 170


def test_class_lists_and_unseen_splits_are_the_authors():
    voc, context, coco = (get_preset(f"{d}-inductive").classes for d in ("voc", "context", "coco"))
    assert (len(voc.names), len(context.names), len(coco.names)) == (20, 59, 171)
    assert [voc.names[i] for i in voc.unseen] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert [context.names[i] for i in context.unseen] == [
        "aeroplane",
        "bed",
        "bedclothes",
        "boat",
        "bottle",
        "car",
        "cloth",
        "cow",
        "keyboard",
        "plate",
    ]
    assert [coco.names[i] for i in coco.unseen] == [
        "cow",
        "giraffe",
        "suitcase",
        "frisbee",
        "skateboard",
        "carrot",
        "scissors",
        "cardboard",
        "clouds",
        "grass",
        "playingfield",
        "river",
        "road",
        "tree",
        "wall-concrete",
    ]
    for name, dataset in (("coco-to-voc", "voc"), ("coco-to-context", "context")):
        cross = get_preset(name)
        assert cross.classes.dataset == dataset and cross.classes.unseen == ()
        assert cross.model.image_encoder.prompt_tokens == 50


def test_eval_dataset_resizes_the_short_side_to_512_and_keeps_the_label_size(tmp_path):
    raw = make_voc(tmp_path, {"val": ["v1", "v2", "v3"]}, size=(30, 40))
    dataset = eval_dataset("voc", tmp_path, "val", short_side=512)
    item = dataset[0]
    assert item["error"] is None and item["name"] == "v1"
    assert item["image"].shape == (3, 512, 683)  # 30x40 -> 512 x round(40 * 512 / 30)
    assert item["label"].shape == (30, 40) and item["label"].dtype == torch.uint8
    np.testing.assert_array_equal(item["label"].numpy(), reduced(raw["v1"]))
    # ImageNet normalisation: undoing it gives 0..255 pixel values.
    pixels = item["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    # Ranks take disjoint shares that together are the whole split.
    shares = [[item["name"] for item in eval_dataset("voc", tmp_path, "val", 64, rank, 2)] for rank in (0, 1)]
    assert shares == [["v1", "v3"], ["v2"]]


def _break(path, how):
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"this is not an image")
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize(
    "kind, how, message",
    [
        ("image", "missing", "not found"),
        ("image", "truncated", "cannot be read"),
        ("label", "missing", "not found"),
        ("label", "garbage", "cannot be read"),
        ("label", "truncated", "cannot be read"),
        ("label", "out_of_range", r"holds values \[21, 40\] outside 0..20"),
        ("label", "rgb", "single-channel"),
        ("label", "wrong_size", "is 10x10 but its image is 30x20"),
    ],
)
def test_bad_files_give_an_error_naming_the_file(tmp_path, kind, how, message):
    make_voc(tmp_path, {"val": ["v1"]})
    sample = list_samples("voc", tmp_path, "val")[0]
    path = sample.image if kind == "image" else sample.label
    if how == "out_of_range":
        label = np.array(Image.open(path))
        label[5, 5], label[6, 6] = 21, 40
        Image.fromarray(label).save(path)
    elif how == "rgb":
        Image.new("RGB", (30, 20)).save(path)
    elif how == "wrong_size":
        Image.new("L", (10, 10)).save(path)
    else:
        _break(path, how)
    with pytest.raises(UserError, match=message) as err:
        item = eval_dataset("voc", tmp_path, "val")[0]
        raise UserError(item["error"] or "no error")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_root_and_split_file_are_reported(tmp_path):
    with pytest.raises(UserError, match="--data-root"):
        list_samples("voc", tmp_path / "nowhere", "val")
    make_voc(tmp_path, {"train": ["t1"]})
    with pytest.raises(UserError, match=r"split file .*val\.txt not found"):
        list_samples("voc", tmp_path, "val")


def test_the_data_root_can_come_from_the_environment(tmp_path, monkeypatch, capsys):
    make_voc(tmp_path, {"val": ["v1"]})
    monkeypatch.setenv("CASCADECLIP_DATA_ROOT", str(tmp_path))
    assert [s.image for s in list_samples("voc", None, "val")] == [tmp_path / "VOCdevkit/VOC2012/JPEGImages/v1.jpg"]
    assert main(["check-data", "--split", "val"]) == 0
    assert f"checking voc under {tmp_path}" in capsys.readouterr().out
    with pytest.raises(UserError, match="nowhere"):  # the option wins over the environment
        list_samples("voc", tmp_path / "nowhere", "val")


def test_check_data_counts_a_good_root(tmp_path, capsys):
    make_voc(tmp_path, {"train": ["t1", "t2"], "aug": ["a1"], "val": ["v1"]})
    make_coco(tmp_path, {"train": ["c1"], "val": ["c2", "c3"]})
    assert main(["check-data", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "checking voc, coco" in out  # Context is absent and not checked
    assert re.search(r"train +3 listed +3 images +3 labels +ok", out)  # VOC: train.txt + aug.txt
    assert re.search(r"val +1 listed +1 images +1 labels +ok", out)  # VOC
    assert re.search(r"val +2 listed +2 images +2 labels +ok", out)  # COCO
    assert "note: the standard val split has 1449 images" in out and "has 5000 images" in out  # tiny splits


def test_check_data_lists_every_problem(tmp_path, capsys):
    make_voc(tmp_path, {"train": ["t1"], "val": ["v1", "v2", "v3", "v4"]})
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "v1.jpg").unlink()
    (base / "SegmentationClass" / "v2.png").unlink()
    Image.fromarray(np.full((20, 30), 33, np.uint8)).save(base / "SegmentationClass" / "v3.png")
    _break(base / "JPEGImages" / "v4.jpg", "garbage")
    (base / "ImageSets" / "Segmentation" / "train.txt").unlink()
    make_coco(tmp_path, {"val": ["c1", "c2"]})
    (tmp_path / "coco_stuff164k" / "images" / "val2017" / "c2.jpg").unlink()  # its label is left without image
    assert main(["check-data", "--data-root", str(tmp_path), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "train  PROBLEM: split file" in out
    assert re.search(r"val +4 listed +3 images +3 labels +PROBLEMS", out)
    assert "listed names without an image (1):\n      v1" in out
    assert "listed names without a label (1):\n      v2" in out
    assert "v3.png holds values [33]" in out and "v4.jpg cannot be read" in out
    assert "label files without an image (1):" in out and "c2_labelTrainIds.png" in out


def test_check_data_without_any_dataset_says_where_it_looked(tmp_path, capsys):
    assert main(["check-data", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "VOCdevkit/VOC2012" in err and "Traceback" not in err


def test_check_data_decode_images_finds_truncated_files(tmp_path, capsys):
    make_voc(tmp_path, {"val": ["v1", "v2"]}, size=(64, 64))
    _break(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "v2.jpg", "truncated")
    check = ["check-data", "--data-root", str(tmp_path), "--split", "val"]
    assert main(check) == 0  # headers only: the size is still readable
    capsys.readouterr()
    assert main([*check, "--decode-images"]) == 1
    assert "v2.jpg cannot be read" in capsys.readouterr().out


def test_check_data_reports_an_empty_split(tmp_path, capsys):
    make_voc(tmp_path, {"train": ["t1"], "aug": ["a1"], "val": ["v1"]})
    val_list = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    val_list.write_text("\n")
    assert main(["check-data", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"train +2 listed +2 images +2 labels +ok", out)
    assert f"val    PROBLEM: the val split is empty: split file {val_list} lists no image ids" in out
    assert "problems found" in out and "complete and valid" not in out


def test_check_data_reports_an_empty_image_folder(tmp_path, capsys):
    make_coco(tmp_path, {"val": ["c1"]})
    image = tmp_path / "coco_stuff164k" / "images" / "val2017" / "c1.jpg"
    image.unlink()
    (tmp_path / "coco_stuff164k" / "annotations" / "val2017" / "c1_labelTrainIds.png").unlink()
    assert main(["check-data", "--data-root", str(tmp_path), "--split", "val"]) == 1
    assert f"image folder {image.parent} holds no *.jpg files" in capsys.readouterr().out
