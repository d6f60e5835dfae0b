"""`cascade-clip segment` and the `Segmenter` API, on a tiny random model saved in our format (CPU).

The weights are random, so what is checked is the plumbing and the pictures, never what the labels say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from cascadeclip import Segmenter
from cascadeclip.cli.main import main
from cascadeclip.factory import save_model
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.segmenter import upsampled_strips
from cascadeclip.visualize import palette

from conftest import tiny_model_config
from test_factory import make_openai_archive

SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png")  # shipped inside scikit-image (no download)
CLASSES = ["cat", "person", "coffee cup", "grass"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own text-embedding cache, never the user's."""
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_model(path, CascadeCLIP(tiny_model_config(with_text=True)))
    return path


@pytest.fixture
def sample_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(Path(skimage.data.__file__).parent / name, folder / name)
    return folder


def segment(*args: str) -> int:
    return main(["segment", *map(str, args), "--device", "cpu"])


def test_folder_gives_labels_overlay_and_summary_per_image(checkpoint, sample_folder, tmp_path):
    out = tmp_path / "out"
    assert segment(sample_folder, "--classes", ", ".join(CLASSES), "--checkpoint", checkpoint, "--out", out) == 0
    colors = palette(len(CLASSES))
    for name in SAMPLES:
        stem = Path(name).stem
        with Image.open(sample_folder / name) as original:
            width, height = original.size
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == (width, height)
        values = np.array(labels)
        assert set(np.unique(values)) <= set(range(len(CLASSES)))  # no background unless asked for
        assert np.array_equal(np.array(labels.getpalette()[: 3 * len(CLASSES)]).reshape(-1, 3), colors)

        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width == width and overlay.height > height  # the image at its size, the legend below
        legend_text = overlay.text["Description"]
        assert all(c in legend_text for c in CLASSES)  # found ones with their share, the others as "not found"
        strip = np.array(overlay.convert("RGB"))[height:].reshape(-1, 3)
        for index in np.unique(values):  # each class found has its colour swatch in the legend strip
            assert (strip == colors[index]).all(1).sum() >= 100

        summary = json.loads((out / f"{stem}.json").read_text())
        assert (summary["width"], summary["height"]) == (width, height)
        assert [c["name"] for c in summary["classes"]] == CLASSES
        shares = np.array([c["pixel_share"] for c in summary["classes"]])
        counts = np.bincount(values.ravel(), minlength=len(CLASSES)) / values.size
        np.testing.assert_allclose(shares, counts, atol=1e-6)  # JSON rounds to 6 decimals
        assert summary["background"] is None


def test_background_and_scores(checkpoint, sample_folder, tmp_path):
    out = tmp_path / "out"
    image = sample_folder / "chelsea.png"
    # Random weights score every class near 0.5; the median best score splits the image in two.
    prediction = Segmenter.from_pretrained(checkpoint, device="cpu").predict(image, CLASSES)
    threshold = float(np.median(prediction.scores.max(0)))
    assert (
        segment(
            image,
            "--classes",
            ", ".join(CLASSES),
            "--checkpoint",
            checkpoint,
            "--out",
            out,
            "--background",
            threshold,
            "--scores",
        )
        == 0
    )
    labels = np.array(Image.open(out / "chelsea_labels.png"))
    with np.load(out / "chelsea_scores.npz") as data:
        scores, names = data["scores"], list(data["names"])
    assert names == CLASSES and scores.dtype == np.float16 and scores.shape == (len(CLASSES), *labels.shape)
    # float16 holds values in [0, 1] to within 2^-11 relative, so 5e-4 absolute.
    np.testing.assert_allclose(scores.astype(np.float32), prediction.scores, atol=5e-4, rtol=0)
    best = prediction.scores.max(0)
    assert np.array_equal(labels == 255, best < threshold)
    assert np.array_equal(labels[best >= threshold], prediction.scores.argmax(0)[best >= threshold])
    summary = json.loads((out / "chelsea.json").read_text())
    assert summary["background"]["pixel_share"] == pytest.approx((labels == 255).mean(), abs=1e-6)
    assert "background" in Image.open(out / "chelsea_overlay.png").text["Description"]


def test_api_returns_one_mask_per_label_that_partition_the_image(checkpoint):
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu")
    image = skimage.data.coffee()  # a numpy array
    segments = segmenter(image, candidate_labels=CLASSES)
    assert [s["label"] for s in segments] == CLASSES
    masks = np.stack([np.array(s["mask"]) for s in segments])
    assert all(s["mask"].mode == "L" and s["mask"].size == (image.shape[1], image.shape[0]) for s in segments)
    assert set(np.unique(masks)) <= {0, 255}
    assert ((masks == 255).sum(0) == 1).all()  # every pixel in exactly one mask
    for s, mask in zip(segments, masks, strict=True):
        assert s["score"] == 0.0 if not mask.any() else 0 < s["score"] <= 1

    with_background = segmenter(image, candidate_labels=CLASSES, background=0.99)  # nothing reaches 0.99
    assert [s["label"] for s in with_background] == [*CLASSES, "background"]
    assert np.array(with_background[-1]["mask"]).min() == 255

    raw = segmenter.predict(image, CLASSES)
    assert raw.labels.shape == image.shape[:2] and raw.scores.shape == (len(CLASSES), *image.shape[:2])
    assert np.array_equal(raw.labels, raw.scores.argmax(0))


@pytest.mark.parametrize("bf16", [False, True])
def test_whole_image_mode_on_sizes_that_are_not_whole_patches(checkpoint, bf16):
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", mode="whole", bf16=bf16)
    image = np.random.default_rng(0).integers(0, 256, (37, 101, 3), dtype=np.uint8)
    prediction = segmenter.predict(image, ["a", "b"])
    assert prediction.labels.shape == (37, 101) and np.isfinite(prediction.scores).all()
    assert prediction.pixel_share.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("channels_last", [False, True])  # the model's output is in channels-last layout
def test_strip_upsampling_equals_bilinear_interpolation(channels_last):
    scores = torch.rand(1, 3, 13, 17)
    scores = scores.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)[0]
    for size in [(40, 61), (26, 34)]:  # up, and up by exactly 2
        expected = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        pieces = [strip for _, _, strip in upsampled_strips(scores, size, max_elements=3 * size[1] * 4)]
        assert len(pieces) == -(-size[0] // 4)
        # Rows blended, then columns, where PyTorch blends both at once: float32 rounding only.
        torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=1e-6, rtol=0)
    for size, budget in [((40, 61), 3 * 40 * 61), ((7, 5), 1)]:  # within the budget; no larger than the scores
        # At once: PyTorch's resize itself.
        (whole,) = [strip for _, _, strip in upsampled_strips(scores, size, max_elements=budget)]
        assert torch.equal(whole, F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0])


def test_text_embeddings_come_from_the_disk_cache_the_second_time(checkpoint):
    def prompts_encoded(segmenter):
        prompts = []
        segmenter.text_encoder.register_forward_hook(lambda _, inputs, __: prompts.append(len(inputs[0])))
        return prompts

    first = Segmenter.from_pretrained(checkpoint, device="cpu")
    prompts = prompts_encoded(first)
    embeddings = first.class_embeddings(CLASSES)
    assert sum(prompts) == 15 * len(CLASSES)  # every name in all 15 templates

    second = Segmenter.from_pretrained(checkpoint, device="cpu")  # a new process would start like this
    prompts = prompts_encoded(second)
    assert torch.equal(second.class_embeddings(CLASSES), embeddings) and not prompts
    second.class_embeddings([*CLASSES, "sky"])
    assert sum(prompts) == 15  # only the new name

    single = Segmenter.from_pretrained(checkpoint, device="cpu", templates="single")
    prompts = prompts_encoded(single)
    assert not torch.allclose(single.class_embeddings(CLASSES), embeddings) and sum(prompts) == len(CLASSES)


def test_damaged_cache_entry_is_recomputed(checkpoint, tmp_path):
    Segmenter.from_pretrained(checkpoint, device="cpu").class_embeddings(["cat"])
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    entry.write_bytes(b"garbage")
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu")
    assert segmenter.class_embeddings(["cat"]).shape == (1, 32)
    assert np.load(entry)["name"] == "cat"  # rewritten


def test_text_tower_from_openai_clip_weights(tmp_path):
    clip = make_openai_archive(tmp_path / "ViT-tiny.pt")
    torch.manual_seed(0)
    no_tower = tmp_path / "no_tower.safetensors"
    save_model(no_tower, CascadeCLIP(tiny_model_config()))
    segmenter = Segmenter.from_pretrained(
        no_tower, clip_weights=tmp_path / "ViT-tiny.pt", device="cpu", templates="single"
    )
    from open_clip.tokenizer import tokenize

    with torch.no_grad():
        expected = clip.encode_text(tokenize(["a photo of a cat"]), normalize=True)
    torch.testing.assert_close(segmenter.class_embeddings(["cat"]), expected, atol=1e-5, rtol=0)  # float32 op order


def test_authors_pth_brings_its_own_text_tower(tmp_path):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config(with_text=True))
    torch.save({"meta": {}, "state_dict": model.state_dict()}, tmp_path / "iter_80000.pth")  # the authors' layout
    segmenter = Segmenter.from_pretrained(tmp_path / "iter_80000.pth", device="cpu")
    tower = segmenter.text_encoder.state_dict()
    assert all(torch.equal(v, tower[k]) for k, v in model.text_encoder.state_dict().items())
    assert len(segmenter(skimage.data.chelsea(), candidate_labels=["cat", "rug"])) == 2


def test_an_interrupted_run_resumes(checkpoint, sample_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = [sample_folder, "--classes", "cat, dog", "--checkpoint", checkpoint, "--out", out]
    assert segment(*args) == 0
    (out / "coffee.json").unlink()  # as if stopped while writing coffee's outputs
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("astronaut*")}
    capsys.readouterr()
    assert segment(*args) == 0
    assert "2 already done" in capsys.readouterr().out and (out / "coffee.json").is_file()
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("astronaut*")}
    assert segment(*args[:-4], "--classes", "cat, dog, sky", *args[-4:]) == 0  # other classes: all redone
    assert json.loads((out / "astronaut.json").read_text())["settings"]["classes"] == ["cat", "dog", "sky"]


def test_outputs_written_into_the_input_folder_are_not_taken_as_inputs(checkpoint, sample_folder, capsys):
    args = [sample_folder, "--classes", "cat, dog", "--checkpoint", checkpoint, "--out", sample_folder]
    assert segment(*args) == 0 and segment(*args) == 0
    assert f"segmented 0 of {len(SAMPLES)} image(s)" in capsys.readouterr().out.splitlines()[-1]  # all done before
    assert not list(sample_folder.glob("*_overlay_*"))


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, exit status 2, nothing written
# ----------------------------------------------------------------------------------------------------------------


def _fails(capsys, out: Path, *args, match: str) -> None:
    assert segment(*args, "--out", out) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert not out.exists()


def test_bad_inputs_fail_clearly_and_write_nothing(checkpoint, sample_folder, tmp_path, capsys):
    out = tmp_path / "out"
    good = ["--classes", "cat, dog", "--checkpoint", checkpoint]
    _fails(capsys, out, sample_folder / "nope.jpg", *good, match="nope.jpg not found")
    _fails(capsys, out, tmp_path / "*.jpg", *good, match="no image files match")
    (sample_folder / "broken.png").write_bytes((sample_folder / "coffee.png").read_bytes()[:5000])  # truncated
    _fails(capsys, out, sample_folder, *good, match="broken.png cannot be read")
    (sample_folder / "broken.png").write_text("not an image")
    _fails(capsys, out, sample_folder, *good, match="broken.png cannot be read")
    (sample_folder / "broken.png").unlink()

    image = sample_folder / "chelsea.png"
    _fails(
        capsys,
        out,
        image,
        "--classes",
        "cat,,dog",
        "--checkpoint",
        checkpoint,
        match="class name number 2 of 3 is empty",
    )
    _fails(capsys, out, image, "--classes", " ", "--checkpoint", checkpoint, match="is empty")
    _fails(capsys, out, image, "--classes", "cat, dog, Cat", "--checkpoint", checkpoint, match="'Cat' is given twice")
    (tmp_path / "names.txt").write_text("\n\n")
    _fails(
        capsys, out, image, "--classes-file", tmp_path / "names.txt", "--checkpoint", checkpoint, match="no class names"
    )
    _fails(
        capsys,
        out,
        image,
        "--classes",
        "cat, background",
        "--checkpoint",
        checkpoint,
        "--background",
        match="named 'background' and --background",
    )
    _fails(capsys, out, image, *good, "--background", "1.5", match="between 0 and 1")


@pytest.mark.filterwarnings("ignore:.*TorchScript:UserWarning", "ignore::FutureWarning")  # torch.load on CLIP's .pt
def test_missing_or_wrong_weights_say_what_to_use(checkpoint, sample_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = [sample_folder / "chelsea.png", "--classes", "cat, dog"]
    _fails(capsys, out, *args, match="github.com/HVision-NKU/Cascade-CLIP")  # no --checkpoint at all
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "iter_80000.pth", match="iter_80000.pth not found")
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "x.pth", match="cascade-clip convert")
    _fails(
        capsys, out, *args, "--checkpoint", checkpoint, "--clip-weights", tmp_path / "ViT-B-16.pt", match="openaipublic"
    )

    make_openai_archive(tmp_path / "ViT-tiny.pt")
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "ViT-tiny.pt", match="goes to --clip-weights")
    save_file(
        {"visual.conv1.weight": torch.zeros(1)}, str(tmp_path / "clip.safetensors"), metadata={"format": "openai-clip"}
    )
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "clip.safetensors", match="holds OpenAI CLIP weights")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "other.safetensors", match="not a cascadeclip model")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "junk.pth", match="cannot read")
    torch.save({"model": {}}, tmp_path / "dict.pth")
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "dict.pth", match="not an authors' Cascade-CLIP checkpoint")

    save_model(tmp_path / "no_tower.safetensors", CascadeCLIP(tiny_model_config()))
    _fails(capsys, out, *args, "--checkpoint", tmp_path / "no_tower.safetensors", match="no CLIP text tower")


def test_outputs_for_two_images_with_one_name_are_refused(checkpoint, sample_folder, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sample_folder / "coffee.png", other / "coffee.png")
    _fails(
        capsys,
        tmp_path / "out",
        sample_folder,
        other / "coffee.png",
        "--classes",
        "cup",
        "--checkpoint",
        checkpoint,
        match="would write the same outputs",
    )


def test_random_weights_warn_that_the_output_is_meaningless():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        segmenter = Segmenter.with_random_weights(tiny_model_config(with_text=True), device="cpu")
    assert len(segmenter(np.zeros((20, 30, 3), dtype=np.uint8), candidate_labels=["a", "b"])) == 2


def test_random_weights_switch_runs_the_full_size_model_and_says_so(sample_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        segment(sample_folder / "chelsea.png", "--classes", "cat", "--random-weights", "--mode", "whole", "--out", out)
        == 0
    )
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and "meaningless" in captured.out
    assert "RANDOM WEIGHTS" in Image.open(out / "chelsea_overlay.png").text["Description"]
