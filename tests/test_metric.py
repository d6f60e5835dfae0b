"""The dataset-level IoU metric against an independent confusion-matrix computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascadeclip.evaluation import IoUAccumulator

NUM_CLASSES = 12
UNSEEN = (2, 7, 9, 11)
NAMES = tuple(f"class{i}" for i in range(NUM_CLASSES))


def random_maps(seed: int, count: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, label) pairs of various sizes with 255 pixels. Class 10 appears nowhere (its IoU is NaN), class
    11 only in predictions (IoU 0), class 9 only in labels (IoU 0), class 8 only in predictions on ignored pixels
    (not counted: NaN), and predictions near the labels so that IoUs are spread out."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        height, width = rng.integers(5, 40, size=2)
        label = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9], size=(height, width))
        prediction = np.where(
            rng.random((height, width)) < 0.6, label, rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 11], size=(height, width))
        )
        prediction[prediction == 9] = 3
        ignore = rng.random((height, width)) < 0.2
        label[ignore] = 255
        prediction[ignore & (rng.random((height, width)) < 0.5)] = 8
        pairs.append((prediction, label))
    return pairs


def confusion_reference(pairs, unseen) -> dict:
    """The metrics from a summed confusion matrix, written independently of the implementation."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)  # rows: ground truth, columns: prediction
    for prediction, label in pairs:
        valid = label != 255
        np.add.at(confusion, (label[valid], prediction[valid]), 1)
    diagonal = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - diagonal
    iou = np.full(NUM_CLASSES, np.nan)
    iou[union > 0] = diagonal[union > 0] / union[union > 0]
    seen = [c for c in range(NUM_CLASSES) if c not in unseen]
    s, u = np.nanmean(iou[seen]) * 100, np.nanmean(iou[list(unseen)]) * 100
    return {
        "iou": iou * 100,
        "seen": s,
        "unseen": u,
        "h": 2 * s * u / (s + u),
        "all": np.nanmean(iou) * 100,
        "aacc": diagonal.sum() / confusion.sum() * 100,
    }


def accumulate(pairs) -> IoUAccumulator:
    counts = IoUAccumulator(NUM_CLASSES)
    for prediction, label in pairs:
        counts.update(torch.from_numpy(prediction), torch.from_numpy(label).to(torch.uint8))
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_equals_a_confusion_matrix_computation(seed):
    pairs = random_maps(seed)
    expected = confusion_reference(pairs, UNSEEN)
    results = accumulate(pairs).results(NAMES, UNSEEN)
    # Both sides divide the same integer counts in float64; 1e-9 only allows for summation order.
    got = np.array([np.nan if r["IoU"] is None else r["IoU"] for r in results["per_class"]])
    np.testing.assert_allclose(got, expected["iou"], rtol=0, atol=1e-9)
    assert np.isnan(got[10]) and np.isnan(got[8]) and got[11] == 0 and got[9] == 0
    assert results["mIoU_seen"] == pytest.approx(expected["seen"], abs=1e-9)
    assert results["mIoU_unseen"] == pytest.approx(expected["unseen"], abs=1e-9)
    assert results["hIoU"] == pytest.approx(expected["h"], abs=1e-9)
    assert results["mIoU"] == pytest.approx(expected["all"], abs=1e-9)
    assert results["aAcc"] == pytest.approx(expected["aacc"], abs=1e-9)
    assert results["images"] == len(pairs)
    assert [r["split"] for r in results["per_class"]].count("unseen") == len(UNSEEN)


def test_two_halves_merged_equal_the_whole():
    pairs = random_maps(3, count=7)
    whole = accumulate(pairs)
    merged = accumulate(pairs[:3]).merge(accumulate(pairs[3:]))
    assert torch.equal(merged.counts, whole.counts) and merged.images == whole.images == 7
    assert merged.results(NAMES, UNSEEN) == whole.results(NAMES, UNSEEN)


def test_batched_update_counts_images():
    label = torch.randint(0, NUM_CLASSES, (3, 8, 8))
    counts = IoUAccumulator(NUM_CLASSES)
    counts.update(label, label)
    assert counts.images == 3


def test_perfect_prediction_scores_100_and_missing_unseen_classes_give_none():
    label = torch.tensor([[0, 1, 255], [1, 3, 3]])
    results = accumulate([(label.numpy(), label.numpy())]).results(NAMES, UNSEEN)
    assert results["mIoU_seen"] == results["mIoU"] == results["aAcc"] == 100
    assert results["mIoU_unseen"] is None and results["hIoU"] is None  # no unseen class present
    no_unseen = accumulate([(label.numpy(), label.numpy())]).results(NAMES, ())
    assert no_unseen["mIoU_unseen"] is None and no_unseen["mIoU_seen"] == 100
