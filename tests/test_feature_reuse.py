"""`Segmenter.set_image` then `predict(names)`: the image encoder runs once per image, the head once per set of names,
and the numbers are those of a full prediction (tiny random model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from cascadeclip import Segmenter
from cascadeclip.inference.encoded_image import decode_scores, encode_image
from cascadeclip.inference.predict import predict_scores
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.utils import UserError

from conftest import tiny_model_config

NAME_SETS = (["cat", "person", "coffee cup", "grass"], ["cup", "table"], ["cup", "table", "saucer", "spoon", "wall"])


def tiny_segmenter(tmp_path, **options) -> Segmenter:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return Segmenter.with_random_weights(
            tiny_model_config(with_text=True), device="cpu", cache_dir=tmp_path, **options
        )


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_new_names_on_a_set_image_run_only_the_head_and_match_a_full_prediction(tmp_path, mode):
    # window_batch=1: the coffee picture (400x600) is 64x96 at the tiny model's 64-pixel short side, two windows
    # in slide mode, so the encoder runs twice per full prediction.
    segmenter = tiny_segmenter(tmp_path, mode=mode, window_batch=1)
    image = skimage.data.coffee()
    encoder_calls, head_calls = count_calls(segmenter.model.backbone), count_calls(segmenter.model.decode_head)
    segmenter.set_image(image)
    windows = 2 if mode == "slide" else 1
    assert len(encoder_calls) == windows and not head_calls
    for names in NAME_SETS:
        encoder_calls.clear(), head_calls.clear()
        cached = segmenter.predict(names)
        assert not encoder_calls and len(head_calls) == windows  # the encoder did not run again
        full = segmenter.predict(image, names)
        assert len(encoder_calls) == windows
        # The same operations on the same windows: equal up to float rounding; 1e-5 on probabilities in [0, 1].
        np.testing.assert_allclose(cached.scores, full.scores, atol=1e-5, rtol=0)
        top2 = np.sort(full.scores, axis=0)[-2:]
        clear = top2[1] - top2[0] > 2e-5  # pixels whose winner cannot flip by 1e-5 changes (random weights
        # score every class near 0.5, so the margins are small)
        assert clear.mean() > 0.5 and np.array_equal(cached.labels[clear], full.labels[clear])
        np.testing.assert_allclose(cached.pixel_share, full.pixel_share, atol=1 - clear.mean() + 1e-12)
        np.testing.assert_allclose(cached.max_score, full.max_score, atol=1e-5, rtol=0)


def test_decode_of_encoded_windows_equals_the_model_on_each_window():
    """The split below the Segmenter: `encode_image` + `decode_scores` against `predict_scores`, whose windows
    go through `CascadeCLIP.forward`, on the reference computation (no fast path)."""
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config()).eval()
    image, text = torch.randn(1, 3, 70, 150), torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    encoded = encode_image(model, image, "slide", crop=64, stride=40, window_batch=3)
    assert [len(w.boxes) for w in encoded.windows] == [3, 3, 2]  # 2 rows x 4 columns, 3 at a time
    expected = predict_scores(model, image, text, mode="slide", crop=64, stride=40, window_batch=8)
    torch.testing.assert_close(decode_scores(model, encoded, text), expected, atol=1e-5, rtol=0)


def test_calls_with_names_only_use_the_set_image(tmp_path):
    segmenter = tiny_segmenter(tmp_path)
    with pytest.raises(UserError, match="call set_image"):
        segmenter.predict(["cat"])
    with pytest.raises(UserError, match="no class names given"):
        segmenter.predict(skimage.data.coffee())
    segmenter.set_image(skimage.data.chelsea())
    segments = segmenter(["cat", "rug"], background=0.99)  # random weights: nothing reaches 0.99
    assert [s["label"] for s in segments] == ["cat", "rug", "background"]
    assert segments[0]["mask"].size == segmenter.image.size == (451, 300)
    with pytest.raises(UserError, match="given twice"):
        segmenter.predict(["cat", "Cat"])
    per_image = segmenter([skimage.data.coffee(), skimage.data.chelsea()], ["cup"])  # a list of images and names
    assert [len(s) for s in per_image] == [1, 1]
