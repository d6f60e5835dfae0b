"""Profiling on tiny models: the FLOP counter against a hand count, and `cascade-clip bench`.

Speed itself is measured by benchmarks/efficiency.py, not here.
"""

from __future__ import annotations

import json

import pytest
import torch

from cascadeclip.cli.main import main
from cascadeclip.profiling.flops import count_flops

from test_fast_path import text_embeddings, tiny_model


def hand_count_multiply_adds(cfg, num_classes: int, prompts_as_keys: bool) -> int:
    """Multiply-adds of one whole-image forward of batch 1, from the matrix products of the architecture.

    Elementwise work (norms, activations, softmax, NGA, upsampling) is not counted, as PyTorch's counter does not.
    """
    enc, head = cfg.image_encoder, cfg.head
    w, t, d, c = enc.width, enc.prompt_tokens, enc.output_dim, num_classes
    n = enc.grid_size**2
    tokens = 1 + t + n  # CLS, prompts, patches: the keys of every block
    queries = 1 + n if prompts_as_keys else tokens
    macs = n * (3 * enc.patch_size**2) * w  # patch embedding
    macs += enc.layers * t * w * w  # shared prompt projection, once per prompt set
    for _ in range(enc.layers):
        macs += queries * w * w + tokens * w * 2 * w  # q; k and v
        macs += 2 * queries * tokens * w  # attention logits and weighted values over all heads
        macs += queries * w * w  # attention output projection
        macs += 2 * queries * w * 4 * w  # MLP
    macs += len(enc.tap_blocks) * n * w * d  # per-tap projections of the patch tokens
    macs += (1 + n) * w * d  # final projection of CLS and patches
    for _ in head.stages:
        macs += c * 2 * d * d  # query projection of the relationship descriptor
        for _ in range(head.layers - 1):
            macs += c * d * d + 2 * n * d * d  # q; k and v of the memory
            macs += 2 * c * n * d + c * d * d  # attention, output projection
            macs += 2 * c * d * head.ffn_dim  # FFN
        macs += c * d * d + n * d * d + c * n * d  # last layer: q, k and the mask logits only
    return macs


@pytest.mark.parametrize("prompts_as_keys", [False, True], ids=["reference", "fast"])
def test_flop_counter_equals_hand_count(prompts_as_keys):
    model = tiny_model(prompt_tokens=3).set_fast_path(prompts_as_keys)
    images, text = torch.randn(1, 3, 64, 64), text_embeddings(7)
    expected = 2 * hand_count_multiply_adds(model.cfg, num_classes=7, prompts_as_keys=prompts_as_keys)
    assert count_flops(model, images, text) == expected
    assert any(p.requires_grad for p in model.parameters())  # counting left the trainable set alone


TINY_OVERRIDES = [
    "model.image_encoder.width=64",
    "model.image_encoder.heads=4",
    "model.image_encoder.output_dim=32",
    "model.image_encoder.image_size=64",
    "model.head.dim=32",
    "model.head.heads=4",
    "model.head.ffn_dim=64",
    "test.crop_size=64",
    "test.stride=48",
    "test.short_side=64",
]


def test_bench_writes_json_with_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "voc-inductive",
        *TINY_OVERRIDES,
        "--image-size",
        "60",
        "90",
        "--images",
        "3",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--latency-warmup",
        "1",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    assert "GFLOPs" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert {"config", "machine", "settings", "parameters", "flops", "runs"} <= results.keys()
    for accounting in ("model", "with_text_tower", "authors"):
        counts = results["parameters"][accounting]
        assert 0 < counts["trainable"] < counts["total"]
    assert results["parameters"]["authors"]["total"] > results["parameters"]["with_text_tower"]["total"]
    flops = results["flops"]
    assert flops["image_size"] == 64 and flops["classes"] == 20
    for path in ("reference", "fast"):
        assert flops[path]["pytorch"] == 2 * flops[path]["fvcore"] > 0
    assert flops["fast"]["fvcore"] < flops["reference"]["fvcore"]
    assert [(r["device"], r["precision"]) for r in results["runs"]] == [("cpu", "fp32"), ("cpu", "bf16")]
    for run in results["runs"]:
        latency = run["latency_seconds"]
        assert latency["repeats"] == 2 and 0 < latency["min"] <= latency["median"] <= latency["max"]
        assert run["memory"]["weights_bytes"] > 0 and "method" in run["memory"]
        assert run["fps"]["images"] == 2 and run["fps"]["warmup"] == 1 and run["fps"]["fps"] > 0
    assert results["settings"]["fps_source"] == "generated images of 60x90"


def test_bench_rejects_warmup_not_below_images(capsys):
    assert main(["bench", "voc-inductive", "--images", "5", "--warmup", "5"]) == 2
    assert "--warmup" in capsys.readouterr().err
