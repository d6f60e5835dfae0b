"""The windows of many images through the model together: the scores of a stream of images of any sizes.

Each image is cut into its windows (the sliding windows of `predict_scores`, or in whole-image mode the image padded
to whole patches), and windows of the same size wait in a queue until `window_batch` of them, from one image or
several, go through the model in one forward. An image's scores are complete once all its windows have been
through; then it is handed back. For a single image the forwards are those of `predict_scores`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..modeling.cascade_clip import CascadeCLIP
from .predict import WindowAverage, class_scores, image_windows


@dataclass
class _Image:
    """An image whose windows are on their way through the model."""

    key: object
    size: tuple[int, int]  # (h, w) before padding
    average: WindowAverage
    waiting: int  # windows not yet through the model


@torch.no_grad()
def stream_scores(
    model: CascadeCLIP,
    images: Iterable[tuple[object, torch.Tensor]],
    text: torch.Tensor,
    mode: str = "slide",
    crop: int = 512,
    stride: int = 426,
    window_batch: int = 8,
) -> Iterator[tuple[object, torch.Tensor]]:
    """(key, (1, C, h, w) scores) for each (key, (1, 3, h, w) normalised image), as each image completes.

    Images complete roughly in the order given: at most `window_batch` images are kept waiting for windows of
    their size to fill a batch; beyond that the waiting windows go through in smaller batches.

    Args:
        text: (C, D) class embeddings, on the model's device.
        mode, crop, stride: as for `predict_scores`.
        window_batch: windows per forward.
    """
    device = text.device
    queues: dict[tuple[int, int], list[tuple[_Image, tuple[int, int, int, int], torch.Tensor]]] = {}
    in_flight: list[_Image] = []

    def run(queue: list) -> None:
        """One forward of the queued windows; their probabilities go to their images."""
        windows = torch.cat([window for _, _, window in queue])
        for (image, box, _), scores in zip(queue, class_scores(model(windows, text)), strict=True):
            image.average.add(box, scores)
            image.waiting -= 1
        queue.clear()

    def completed() -> Iterator[tuple[object, torch.Tensor]]:
        for image in [i for i in in_flight if i.waiting == 0]:
            in_flight.remove(image)
            yield image.key, image.average.result()[..., : image.size[0], : image.size[1]]

    for key, tensor in images:
        tensor = tensor.to(device)
        size = tuple(tensor.shape[-2:])
        tensor, boxes = image_windows(tensor, mode, model.cfg.image_encoder.patch_size, crop, stride)
        image = _Image(key, size, WindowAverage(tensor.shape[-2:]), len(boxes))
        in_flight.append(image)
        for box in boxes:
            y0, x0, y1, x1 = box
            queue = queues.setdefault((y1 - y0, x1 - x0), [])
            queue.append((image, box, tensor[:, :, y0:y1, x0:x1]))
            if len(queue) == window_batch:
                run(queue)
        if len(in_flight) > window_batch:  # images of rare window sizes: do not hold them back any longer
            for queue in queues.values():
                if queue:
                    run(queue)
        yield from completed()
    for queue in queues.values():
        if queue:
            run(queue)
    yield from completed()
