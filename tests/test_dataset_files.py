"""Datasets as YAML files: the built-in files and their class lists, every layout and label format they describe,
your own dataset file, and the errors of a bad one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cascadeclip.cli.main import main
from cascadeclip.config.class_names import WORLD_CLASSES
from cascadeclip.config.dataset_file import BUILTIN_DATASETS, BUILTIN_DIR, DatasetFileError, load_dataset
from cascadeclip.config.presets import get_preset, resolve_config
from cascadeclip.data.datasets import list_samples, read_label
from cascadeclip.data.eval_dataset import eval_dataset
from cascadeclip.engine.trainer import train
from cascadeclip.utils import UserError

from tiny_datasets import make_ade150, make_ade847, make_cityscapes, make_context, make_pc459, make_voc


def names_of(dataset: str) -> tuple[str, ...]:
    return load_dataset(dataset).classes.names


def test_every_built_in_dataset_is_a_file_in_the_package():
    assert sorted(BUILTIN_DATASETS) == sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
    for name in BUILTIN_DATASETS:
        assert load_dataset(name).name == name


def test_class_lists_have_their_published_sizes_and_names():
    sizes = {name: load_dataset(name).num_classes for name in BUILTIN_DATASETS}
    assert sizes == {
        "voc": 20,
        "voc21": 21,
        "context": 59,
        "context60": 60,
        "coco": 171,
        "ade150": 150,
        "ade847": 847,
        "pc459": 459,
        "cityscapes": 19,
        "world": 20,
    }
    # First and last names, and some in the middle, as the benchmarks' own lists (MMSegmentation, MaskFormer's
    # ADE20K-847 list, the Pascal Context labels, cityscapesScripts) have them.
    ade150 = names_of("ade150")
    assert ade150[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ade150[-5:] == ("shower", "radiator", "glass", "clock", "flag")
    assert (ade150[7], ade150[89], ade150[149]) == ("bed", "television receiver", "flag")
    ade847 = names_of("ade847")
    assert ade847[:5] == ("wall", "building, edifice", "sky", "tree", "road, route")
    assert ade847[-5:] == (
        "shaving brush",
        "sunglasses",
        "gear shift",
        "towel rail",
        "adding machine, totalizer, totaliser",
    )
    assert ade847[782] == "central processing unit, cpu, c p u , central processor, processor, mainframe"
    pc459 = names_of("pc459")
    assert pc459[:5] == ("accordion", "aeroplane", "air conditioner", "antenna", "artillery")
    assert pc459[-5:] == ("window blinds", "wineglass", "wire", "wood", "wool")
    assert pc459[430] == "unknown"
    context = names_of("context")
    assert (context[0], context[49], context[58]) == ("aeroplane", "table", "wood")
    assert set(context) < set(pc459)  # the 59 classes are a subset of the 459
    assert names_of("context60") == ("background", *context) and names_of("voc21") == ("background", *names_of("voc"))
    cityscapes = names_of("cityscapes")
    assert cityscapes[:5] == ("road", "sidewalk", "building", "wall", "fence")
    assert cityscapes[-5:] == ("truck", "bus", "train", "motorcycle", "bicycle")
    assert names_of("world") == WORLD_CLASSES  # the world's scenes are drawn from the code's list


def test_open_vocabulary_presets_query_every_class_of_their_set():
    for dataset, background in [("ade150", ""), ("ade847", ""), ("pc459", ""), ("cityscapes", "")] + [
        ("voc21", "background"),
        ("context60", "background"),
    ]:
        classes = get_preset(f"coco-to-{dataset}").classes
        assert classes.dataset == dataset and classes.names == names_of(dataset) and classes.unseen == ()
        assert classes.background == background
        assert len(classes.queried) == len(classes.names) - bool(background)
    assert get_preset("coco-to-voc21").classes.text_embeddings == "voc12_single.npy"  # 20 rows, background excluded


# ----------------------------------------------------------------------------------------------------------------
# Layouts and label formats
# ----------------------------------------------------------------------------------------------------------------


def test_ade150_lists_the_folder_and_reduces_zero(tmp_path):
    raw = make_ade150(tmp_path, {"val": ["ADE_val_00000002", "ADE_val_00000001"]})
    val = list_samples("ade150", tmp_path, "val")
    assert [s.name for s in val] == ["ADE_val_00000001", "ADE_val_00000002"]
    label = read_label(val[0].label, load_dataset("ade150"))
    expected = raw["ADE_val_00000001"].astype(np.int64) - 1
    expected[(raw["ADE_val_00000001"] == 0) | (raw["ADE_val_00000001"] == 255)] = 255
    np.testing.assert_array_equal(label, expected)
    assert label.dtype == np.uint8 and label[0, 1] == 149


def test_ade847_reads_16_bit_tiffs_with_65535_ignored(tmp_path):
    raw = make_ade847(tmp_path, ["ADE_val_00000001"])["ADE_val_00000001"]
    raw[1, 0] = 255  # a class (bulletin board), not "ignore", in a 16-bit class set
    Image.fromarray(raw).save(tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_00000001.tif")
    item = eval_dataset("ade847", tmp_path, "val")[0]
    assert item["error"] is None
    label = item["label"].numpy()
    np.testing.assert_array_equal(label, raw)  # values are the classes; 65535 stays the ignore value
    assert label[0, 1] == 846 and label[1, 0] == 255 and (label == 65535).any()


def test_16_bit_tiffs_from_other_writers_read_the_same(tmp_path):
    """Pillow reads the 16-bit TIFFs tifffile writes (here zlib-compressed) and its own LZW ones alike, so no TIFF
    library is needed at run time."""
    raw = make_pc459(tmp_path, ["2008_000002"])["2008_000002"]
    path = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val/2008_000002.tif"
    dataset = load_dataset("pc459")
    expected = read_label(path, dataset)
    np.testing.assert_array_equal(expected, raw)
    tifffile.imwrite(path, raw, compression="zlib")
    np.testing.assert_array_equal(read_label(path, dataset), expected)
    Image.fromarray(raw).save(path, compression="tiff_lzw")
    np.testing.assert_array_equal(read_label(path, dataset), expected)
    Image.frombytes("I;16B", raw.shape[::-1], raw.astype(">u2").tobytes()).save(path)  # big-endian
    np.testing.assert_array_equal(read_label(path, dataset), expected)


def test_cityscapes_lists_city_folders_recursively(tmp_path):
    raw = make_cityscapes(
        tmp_path,
        {"val": {"munster": ["munster_000000_000019"], "frankfurt": ["frankfurt_000000_000294", "frankfurt_000001"]}},
    )
    val = list_samples("cityscapes", tmp_path, "val")
    assert [s.name for s in val] == [
        "frankfurt/frankfurt_000000_000294",
        "frankfurt/frankfurt_000001",
        "munster/munster_000000_000019",
    ]
    assert val[0].image == tmp_path / "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert val[0].label.name == "frankfurt_000000_000294_gtFine_labelTrainIds.png"
    for sample in val:
        np.testing.assert_array_equal(read_label(sample.label, load_dataset("cityscapes")), raw[sample.name])


def test_background_variants_read_the_same_files_without_reduction(tmp_path):
    voc = make_voc(tmp_path, {"val": ["v1"]})
    context = make_context(tmp_path, {"val": ["c1"]})
    for dataset, raw in (("voc21", voc["v1"]), ("context60", context["c1"])):
        (sample,) = list_samples(dataset, tmp_path, "val")
        label = read_label(sample.label, load_dataset(dataset))
        np.testing.assert_array_equal(label, raw)  # 0 = background is class 0 here
        assert label[0, 0] == 0 and names_of(dataset)[0] == "background"


def write_dataset_file(folder: Path, text: str, names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if names is not None:
        (folder / "names.txt").write_text("".join(f"{n}\n" for n in names))
    path = folder / "mine.yaml"
    path.write_text(text)
    return path


def write_pairs(root: Path, labels: dict[str, np.ndarray], label_suffix: str = ".png") -> None:
    for folder in ("photos", "masks"):
        (root / "mine" / folder).mkdir(parents=True, exist_ok=True)
    for name, label in labels.items():
        Image.new("RGB", label.shape[::-1], "gray").save(root / "mine" / "photos" / f"{name}.jpg")
        Image.fromarray(label).save(root / "mine" / "masks" / f"{name}{label_suffix}")


def test_own_dataset_with_non_contiguous_ids(tmp_path):
    path = write_dataset_file(
        tmp_path,
        "folder: mine\nlabel_suffix: .png\nsplits:\n  val: {images: photos, labels: masks}\n"
        "label_values: {10: cat, 20: dog, 30: grass, 31: grass}\nclasses:\n  names: [cat, dog, grass]\n",
    )
    stored = np.array([[10, 20, 30], [31, 255, 10]], np.uint8)
    write_pairs(tmp_path, {"a": stored})
    dataset = load_dataset(path)
    (sample,) = list_samples(path, tmp_path, "val")
    np.testing.assert_array_equal(read_label(sample.label, dataset), [[0, 1, 2], [2, 255, 0]])
    Image.fromarray(np.array([[10, 7, 30]], np.uint8)).save(sample.label)
    with pytest.raises(UserError, match=r"holds values \[7\] that label_values does not list"):
        read_label(sample.label, dataset)
    ignoring = load_dataset(write_dataset_file(tmp_path, path.read_text() + "unlisted_values: ignore\n"))
    np.testing.assert_array_equal(read_label(sample.label, ignoring), [[0, 255, 2]])


def test_own_dataset_with_16_bit_png_labels_of_a_small_class_set(tmp_path):
    path = write_dataset_file(
        tmp_path,
        "folder: mine\nsplits:\n  val: {images: photos, labels: masks}\nignore_value: 65535\n"
        "classes:\n  names_file: names.txt\n  unseen: [b]\n",
        names=["a", "b", "c"],
    )
    write_pairs(tmp_path, {"a": np.array([[0, 1, 2, 65535]], np.uint16)})
    (sample,) = list_samples(path, tmp_path, "val")
    assert Image.open(sample.label).mode == "I;16"
    label = read_label(sample.label, load_dataset(path))
    assert label.dtype == np.uint8 and label.tolist() == [[0, 1, 2, 255]]  # three classes: 8-bit, 255 ignored


def test_a_configuration_can_point_at_a_dataset_file(tmp_path):
    path = write_dataset_file(
        tmp_path / "sets",
        "folder: mine\nsplits:\n  val: {images: photos, labels: masks}\nreduce_zero_label: true\n"
        "classes:\n  names_file: names.txt\n  unseen: [dog]\nprompts:\n  templates: ['a satellite photo of {}.']\n",
        names=["cat", "dog", "grass"],
    )
    (tmp_path / "run.yaml").write_text(f"preset: voc-inductive\nclasses:\n  dataset: {path}\n")
    cfg = resolve_config(str(tmp_path / "run.yaml"))
    assert cfg.classes.names == ("cat", "dog", "grass") and cfg.classes.unseen == (1,) and cfg.classes.seen == (0, 2)
    assert cfg.classes.templates == ("a satellite photo of {}.",) and cfg.classes.text_embeddings == ""
    assert resolve_config("voc-inductive", [f"classes.dataset={path}"]).classes.names == ("cat", "dog", "grass")
    # Names of the configuration replace the dataset's (e.g. synonyms) when their number fits.
    cfg = resolve_config("voc-inductive", [f"classes.dataset={path}", "classes.names=[kitten, puppy, lawn]"])
    assert cfg.classes.names == ("kitten", "puppy", "lawn") and cfg.classes.unseen == (1,)
    with pytest.raises(UserError, match=r"classes.names: 2 names, but the dataset has 3 classes"):
        resolve_config("voc-inductive", [f"classes.dataset={path}", "classes.names=[a, b]"])
    with pytest.raises(UserError, match=r"classes.unseen: \[3\] must be distinct class indices in 0..2"):
        resolve_config("voc-inductive", [f"classes.dataset={path}", "classes.unseen=[3]"])
    with pytest.raises(UserError, match="dataset file .*nowhere.yaml not found"):
        resolve_config("voc-inductive", ["classes.dataset=nowhere.yaml"])
    with pytest.raises(UserError, match="unknown dataset 'vocc'; known: voc, context"):
        resolve_config("voc-inductive", ["classes.dataset=vocc"])


# ----------------------------------------------------------------------------------------------------------------
# Bad dataset files
# ----------------------------------------------------------------------------------------------------------------

GOOD = {
    "folder": "folder: mine",
    "splits": "splits:\n  val: {images: photos, labels: masks}",
    "classes": "classes:\n  names: [cat, dog, sofa]",
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": "foldr: x"}, "unknown field 'foldr'; known fields: classes, folder,"),
        ({"folder": ""}, "folder: missing; give the folder under the data root"),
        ({"folder": "folder: [a, b]"}, r"folder: expected str, got \['a', 'b'\]"),
        ({"splits": "splits: [val]"}, "splits: expected a mapping of split names"),
        ({"splits": "splits:\n  val: {images: photos}"}, "splits.val.labels: missing"),
        ({"splits": "splits:\n  val: [{images: p, labels: m, image: q}]"}, r"splits.val\[0\]: unknown field 'image'"),
        (
            {"splits": "splits:\n  val: {split_file: v.txt, images: p, labels: m, recursive: true}"},
            "splits.val.recursive: applies to a folder listing only",
        ),
        ({"classes": "classes:\n  unseen: [cat]"}, "classes: give the class names either inline"),
        ({"classes": "classes:\n  names_file: absent.txt"}, "classes.names_file: cannot read .*absent.txt"),
        ({"classes": "classes:\n  names: [cat, dog, cat]"}, "'cat' is both class 0 and class 2"),
        ({"classes": "classes:\n  names: [cat, dog, sofa]\n  unseen: sofa"}, "classes.unseen: expected a list"),
        (
            {"classes": "classes:\n  names: [cat, dog, sofa]\n  unseen: [sofaa]"},
            "classes.unseen: 'sofaa' is not one of the 3 class names; did you mean 'sofa'",
        ),
        ({"classes": "classes:\n  names: [cat, dog]\n  background: dog\n  unseen: [dog]"}, "classes.background: is"),
        ({"extra": "ignore_value: 2"}, "ignore_value: 2 is also the value of class 'sofa'"),
        ({"extra": "ignore_value: seven"}, "ignore_value: expected int, got 'seven'"),
        ({"extra": "reduce_zero_label: true\nlabel_values: {1: cat}"}, "reduce_zero_label: cannot be combined"),
        ({"extra": "label_values: {1: cta}"}, "label_values.1: 'cta' is not one of the 3 class names"),
        ({"extra": "label_values: {255: cat}"}, "label_values.255: is the ignore_value"),
        ({"extra": "unlisted_values: ignore"}, "unlisted_values: applies to label_values only"),
        ({"extra": "prompts: {templates: [a photo]}"}, r"prompts.templates: expected templates with \{\}"),
        ({"extra": "prompts: {templates: many}"}, "prompts.templates: expected single, multi or a list"),
        ({"extra": "published_sizes: {test: 5}"}, "published_sizes.test: expected a positive image count"),
    ],
)
def test_bad_dataset_files_name_the_file_and_the_key(tmp_path, change, message):
    parts = {**GOOD, **change}
    path = write_dataset_file(tmp_path, "\n".join(part for part in parts.values() if part) + "\n")
    with pytest.raises(DatasetFileError) as err:
        load_dataset(path)
    assert re.search(message, str(err.value)), str(err.value)
    assert str(err.value).startswith(f"dataset file {path}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message", [("folder: [unclosed\n", "cannot be read as YAML"), ("- a list\n", "must hold a mapping")]
)
def test_unreadable_dataset_files_are_reported(tmp_path, text, message):
    with pytest.raises(DatasetFileError, match=message) as err:
        load_dataset(write_dataset_file(tmp_path, text))
    assert "\n" not in str(err.value)


def test_a_yaml_syntax_error_in_a_dataset_file_names_its_line_and_column(tmp_path):
    path = write_dataset_file(tmp_path, "folder: mine\nsplits: {val: [a\n")
    with pytest.raises(DatasetFileError) as err:
        load_dataset(path)
    assert str(err.value) == (
        f"dataset file {path}: cannot be read as YAML (line 3, column 1: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence at line 2, column 15))"
    )


def test_a_folder_named_as_a_dataset_file_is_reported(tmp_path):
    folder = tmp_path / "mine.yaml"
    folder.mkdir()
    with pytest.raises(UserError, match=f"dataset file {folder} is a folder; give the path"):
        load_dataset(folder)


def test_a_bad_dataset_file_stops_the_commands_before_any_work(tmp_path, capsys):
    path = write_dataset_file(tmp_path, "folder: mine\nsplits: {val: {images: p, labels: m}}\nclasses: {names: []}\n")
    run_dir = tmp_path / "run"
    for argv in (
        ["check-data", "--data-root", str(tmp_path), "--dataset", str(path)],
        ["train", "voc-inductive", f"classes.dataset={path}", "--run-dir", str(run_dir)],
        ["test", "voc-inductive", f"classes.dataset={path}", "--checkpoint", str(tmp_path / "none.safetensors")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"dataset file {path}: classes: give the class names" in err and "Traceback" not in err
    assert not run_dir.exists()


# ----------------------------------------------------------------------------------------------------------------
# check-data with the new layouts
# ----------------------------------------------------------------------------------------------------------------


def test_check_data_finds_each_set_of_files_once(tmp_path, capsys):
    make_context(tmp_path, {"val": ["c1"]})  # VOCdevkit/VOC2010 without the 459-class labels
    make_ade847(tmp_path, ["ADE_val_00000001"])
    make_cityscapes(tmp_path, {"val": {"ulm": ["ulm_000000_000019"]}})
    assert main(["check-data", "--data-root", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    # context60 reads Context's files, pc459 is not prepared under VOC2010: neither is checked
    assert f"checking context, ade847, cityscapes under {tmp_path}" in out
    assert "ade847 (ADE20K_2021_17_01, 847 classes)" in out and "note: the standard val split has 2000 images" in out
    make_pc459(tmp_path, ["c1"])
    label = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val/c1.tif"
    Image.fromarray(np.array([[0, 459]], np.uint16)).save(label)
    assert main(["check-data", "--data-root", str(tmp_path), "--split", "val", "--dataset", "pc459"]) == 1
    out = capsys.readouterr().out
    assert "c1.tif holds values [459] outside 0..458 (and 65535 = ignore)" in out


def test_training_rejects_more_than_255_classes_and_a_background_class_before_starting(tmp_path):
    for preset, message in (
        ("coco-to-ade847", "847 classes; training reads 8-bit labels"),
        ("coco-to-voc21", r"classes.background \('background'\) is for evaluation"),
    ):
        with pytest.raises(UserError, match=message):
            train(resolve_config(preset), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
