"""Windows of several images through the model together (`inference.window_stream`): each image's scores are those
of `predict_scores` on it alone, with fewer forwards (tiny random model, reference computation, CPU)."""

from __future__ import annotations

import pytest
import torch

from cascadeclip.inference.predict import predict_scores
from cascadeclip.inference.window_stream import stream_scores
from cascadeclip.modeling.cascade_clip import CascadeCLIP

from conftest import tiny_model_config
from test_feature_reuse import count_calls


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_each_image_gets_its_own_scores_in_shared_forwards(mode):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config()).eval()
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    # Slide: 2, 1, 2 and 9 windows of 64x64, then 2 of 48x64. Whole: sizes that are and are not whole patches.
    sizes = [(64, 100), (64, 64), (100, 64), (110, 120), (48, 100)]
    images = {f"image {i}": torch.randn(1, 3, *size) for i, size in enumerate(sizes)}
    forwards = count_calls(model.backbone)
    results = dict(stream_scores(model, images.items(), text, mode, crop=64, stride=40, window_batch=4))
    assert sorted(results) == sorted(images)
    shared = len(forwards)
    forwards.clear()
    for key, image in images.items():
        if mode == "whole":  # the reference takes whole patches: pad, then crop, as the Segmenter does
            height, width = image.shape[-2:]
            padded = torch.nn.functional.pad(image, (0, -width % 16, 0, -height % 16))
            expected = predict_scores(model, padded, text, mode="whole")[..., :height, :width]
        else:
            expected = predict_scores(model, image, text, mode="slide", crop=64, stride=40, window_batch=4)
        # Other batch compositions round differently: 1e-5 on probabilities.
        torch.testing.assert_close(results[key], expected, atol=1e-5, rtol=0)
    if mode == "slide":  # 14 windows of 64x64 in 4 forwards and 2 of 48x64 in one, against 1 + 1 + 1 + 3 + 1
        assert (shared, len(forwards)) == (5, 7)
    else:  # every image has its own size: one forward each
        assert shared == len(forwards) == 5
