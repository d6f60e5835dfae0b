"""Equivalence with the authors' implementation on the golden cases computed by running their code.

Every case folder under $CASCADECLIP_GOLDEN_DIR (default: golden/ in the development data, see conftest.SHARED_DIR)
is checked the same way: build the model from case.json, load checkpoint.pth through the loader users use for the
released checkpoints, feed io.pt's inputs. Tolerances: outputs 1e-4 absolute, losses 1e-5 relative, fp32 on CPU,
those the cases were made with: two fp32 implementations of one function differ by their order of summation only
(these cases agree to 1e-5 and better), so anything larger is a difference of function, not rounding.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeclip.config import HeadConfig, ImageEncoderConfig, ModelConfig
from cascadeclip.factory import load_state, read_authors_checkpoint
from cascadeclip.inference.fast_path import chosen_kernels, fast_inference
from cascadeclip.inference.predict import predict_scores, seen_shift_vector
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.modeling.loss import mask_normaliser
from cascadeclip.modeling.zero_shot import training_losses

from conftest import SHARED_DIR, shared_data
from test_loss import one_hot_definition

GOLDEN_DIR = Path(os.environ.get("CASCADECLIP_GOLDEN_DIR") or SHARED_DIR / "golden")
CASES = sorted(p for p in GOLDEN_DIR.glob("*") if (p / "case.json").is_file()) if GOLDEN_DIR.is_dir() else []
OUTPUT_ATOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
ZERO_GRAD = 1e-7  # a gradient under this fraction of the model's largest is zero up to rounding


def model_config(case: dict) -> ModelConfig:
    return ModelConfig(
        image_encoder=ImageEncoderConfig(
            image_size=case["img_size"],
            width=case["width"],
            heads=case["heads"],
            output_dim=case["dim"],
            prompt_tokens=case["T"],
        ),
        head=HeadConfig(dim=case["dim"], heads=case["dec_heads"], ffn_dim=4 * case["dim"]),
    )


# Without cases every golden test still runs once ("no-cases"), to skip or fail saying why.
@pytest.fixture(scope="module", params=CASES or [None], ids=[p.name for p in CASES] or ["no-cases"])
def golden(request):
    folder = request.param
    if folder is None:
        shared_data(GOLDEN_DIR, "golden cases")
        pytest.fail(f"no golden cases found under {GOLDEN_DIR}", pytrace=False)
    meta = json.loads((folder / "case.json").read_text())
    model = CascadeCLIP(model_config(meta["case"]))
    state, _ = read_authors_checkpoint(folder / "checkpoint.pth")
    report = load_state(model, state, str(folder / "checkpoint.pth"))
    io = torch.load(folder / "io.pt", weights_only=True)
    text = torch.from_numpy(np.load(folder / "text_embeddings.npy").astype(np.float32))
    return meta, model.eval(), report, io, text


def test_golden_cases_exist():
    shared_data(GOLDEN_DIR, "golden cases")
    assert CASES, f"no golden cases found under {GOLDEN_DIR}"


def test_golden_skipped_keys_are_the_known_unused_ones(golden):
    _, _, report, _, _ = golden
    assert report.skipped
    for key in report.skipped:
        assert key.startswith("text_encoder.") or ".self_attn." in key or ".norm1." in key or "loss_decode" in key


def test_golden_backbone(golden):
    _, model, _, io, _ = golden
    maps, global_embedding = model.backbone(io["images"])
    assert len(maps) == 7
    for k, dense in enumerate(maps):
        torch.testing.assert_close(dense, io[f"backbone_map{k}"], atol=OUTPUT_ATOL, rtol=0)
    torch.testing.assert_close(global_embedding, io["backbone_global"], atol=OUTPUT_ATOL, rtol=0)


def test_golden_masks_and_scores(golden):
    meta, model, _, io, text = golden
    with torch.no_grad():
        logits = model(io["images"], text)
    torch.testing.assert_close(logits, io["pred_masks"], atol=OUTPUT_ATOL, rtol=0)
    shift = seen_shift_vector(len(text), meta["seen"], 0.1 if meta["case"]["setting"] == "inductive" else 0.0)
    scores = predict_scores(model, io["images"], text, shift, mode="whole")
    torch.testing.assert_close(scores, io["scores"], atol=OUTPUT_ATOL, rtol=0)


def test_golden_fast_path(golden):
    """The fast inference path (prompts as keys only, oneDNN linears) computes the authors' mask logits too."""
    _, model, _, io, text = golden
    model = copy.deepcopy(model).set_fast_path(True)
    with fast_inference("cpu", "fp32"):
        logits = model(io["images"], text)
    torch.testing.assert_close(logits, io["pred_masks"], atol=OUTPUT_ATOL, rtol=0)


def test_golden_slide_scores(golden):
    meta, model, _, io, text = golden
    case = meta["case"]
    shift = seen_shift_vector(len(text), meta["seen"], 0.1 if case["setting"] == "inductive" else 0.0)
    out_size = tuple(io["slide_scores"].shape[-2:])
    for window_batch in (1, 4):  # windows one by one and batched give the same scores
        scores = predict_scores(
            model,
            io["slide_image"],
            text,
            shift,
            crop=case["img_size"],
            stride=case["stride"],
            window_batch=window_batch,
            out_size=out_size,
        )
        torch.testing.assert_close(scores, io["slide_scores"], atol=OUTPUT_ATOL, rtol=0)


def training_copy(model: CascadeCLIP) -> CascadeCLIP:
    """A copy in training mode with every dropout probability at 0, as the golden losses were computed."""
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for layer in model.decode_head.modules():
        if hasattr(layer, "attn_dropout"):
            layer.attn_dropout = 0.0
    return model


def golden_training_losses(model: CascadeCLIP, meta: dict, io: dict, text: torch.Tensor) -> dict:
    return training_losses(
        model, io["images"], io["labels"], text, meta["seen"], meta["unseen"], meta["case"]["setting"]
    )


def assert_authors_losses(losses: dict, meta: dict, io: dict) -> None:
    assert losses["loss_focal"].item() == pytest.approx(meta["loss"]["decode.loss_mask"], rel=LOSS_RTOL)
    assert losses["loss_dice"].item() == pytest.approx(meta["loss"]["decode.loss_dice"], rel=LOSS_RTOL)
    torch.testing.assert_close(losses["loss_focal"].detach(), io["loss_mask"], rtol=LOSS_RTOL, atol=0)
    torch.testing.assert_close(losses["loss_dice"].detach(), io["loss_dice"], rtol=LOSS_RTOL, atol=0)


def test_golden_losses(golden):
    meta, model, _, io, text = golden
    assert_authors_losses(golden_training_losses(training_copy(model), meta, io, text), meta, io)


def test_golden_training_step_as_the_trainer_takes_it(golden):
    """The trainer's step (fast path, linear products on the chosen kernels, the loss summed from labels) has the
    authors' losses, and the gradients of the reference path under the loss written over one-hot targets (the
    authors' formulation)."""
    meta, model, _, io, text = golden
    reference = training_copy(model)
    losses = golden_training_losses(reference, meta, io, text)
    normaliser = mask_normaliser(int(losses["num_pairs"]), torch.device("cpu"))
    focal, dice = one_hot_definition(losses["logits"], losses["targets"], normaliser)
    assert_authors_losses({"loss_focal": focal, "loss_dice": dice}, meta, io)
    (focal + dice).backward()

    trained = training_copy(model).set_fast_path(True)
    with chosen_kernels("cpu"):
        losses = golden_training_losses(trained, meta, io, text)
        (losses["loss_focal"] + losses["loss_dice"]).backward()
    assert_authors_losses(losses, meta, io)
    expected = {name: p.grad for name, p in reference.named_parameters() if p.requires_grad}
    gradients = {name: p.grad for name, p in trained.named_parameters() if p.requires_grad}
    # The masks are the last decoder layer's attention logits: its values, output and FFN get no gradient in either.
    assert {n for n, g in gradients.items() if g is None} == {n for n, g in expected.items() if g is None}
    assert sum(g is not None for g in gradients.values()) > len(gradients) / 2
    top = max(g.abs().max().item() for g in expected.values() if g is not None)
    for name, gradient in gradients.items():
        if gradient is None:
            continue
        scale = expected[name].abs().max().item()
        if scale < ZERO_GRAD * top:
            # Zero up to rounding, e.g. a key bias before a softmax (it shifts each query's logits alike, which
            # softmax ignores): both must be noise of that size.
            assert gradient.abs().max().item() < ZERO_GRAD * top, name
            continue
        # Float rounding (the fast path and the loss sum in another order) moved every other gradient by under 1e-6
        # of its parameter's largest; a change of function moves them by order 1.
        torch.testing.assert_close(
            gradient, expected[name], rtol=GRAD_RTOL, atol=GRAD_RTOL * scale, msg=lambda m, name=name: f"{name}: {m}"
        )
