"""Segment any image with any class names: a Python API in the style of Hugging Face pipelines.

    from cascadeclip import Segmenter
    segmenter = Segmenter.from_pretrained("coco_inductive.safetensors")
    for segment in segmenter("photo.jpg", candidate_labels=["cat", "sofa", "floor"]):
        print(segment["label"], segment["score"], segment["mask"].size)

To try several sets of names on one image, encode it once, in the manner of segment-anything's predictor:
`segmenter.set_image("photo.jpg")`, then `segmenter.predict(["cat", "dog"])` or `segmenter(["cat", "rug"])` run
only the head (a small part of the work) on the kept output of the image encoder.

Scores are the model's per-class sigmoid probabilities, computed independently for each name. For names you choose
there is no seen/unseen split, so the authors' inductive shift (-0.1 on seen classes;
docs/authors-code.md#the-seen-class-shift-acts-on-probabilities) is not applied: every name is scored the same way.
Each pixel takes the name with the highest score. With `background=T`, pixels where no name reaches T are background
instead. That is meaningful for these models although none has a background class: in training, pixels of no class
(VOC background, unseen objects) are negatives for every class
(docs/authors-code.md#ignored-pixels-are-negatives-in-the-focal-loss), so a low score for every name is how the
model says "none of these".
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import ModelConfig, TestConfig, TextEncoderConfig, validate
from .data.images import load_image
from .data.transforms import short_side_size, test_image_tensor
from .distributed import check_device
from .factory import CheckpointError, load_segmentation_weights
from .inference.encoded_image import EncodedImage, decode_scores, encode_image
from .inference.fast_path import fast_inference
from .inference.fast_path import keep_freed_memory as _keep_freed_memory
from .inference.text_embeddings import TextEmbeddingCache, templates_for
from .inference.window_stream import stream_scores
from .modeling.cascade_clip import CascadeCLIP
from .modeling.text_encoder import TextEncoder
from .utils import UserError
from .utils import cache_dir as default_cache_dir
from .visualize import BACKGROUND_LABEL

MAX_CLASSES = 255  # label PNGs hold one byte per pixel, and 255 is background
BACKGROUND_NAME = "background"
# CLIP reads 77 tokens, template included: a longer name would be cut short without a word (and two long names that
# start alike would get one embedding). 200 characters are some 40 words, well inside.
MAX_NAME_LENGTH = 200
# Pixels of the image at inference resolution: the scores of every class are held at that size, so a 20000x5 strip,
# whose short side becomes 512, would need hundreds of GB. 2^24 is 512 x 32768 (a 64:1 panorama).
MAX_WORKING_PIXELS = 1 << 24
# The keys of the inference protocol (a `TestConfig`) that the constructor's keywords name otherwise, for its errors.
PROTOCOL_KEYWORDS = {"crop_size": "crop"}


def parse_class_names(text: str) -> list[str]:
    """Split "cat, dog, grass" into ["cat", "dog", "grass"]; empty entries are kept so that `check_class_names`
    reports them."""
    return [name.strip() for name in text.split(",")]


def check_class_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The names with surrounding spaces removed; UserError if any is empty, repeated, or there are too many."""
    if isinstance(names, str):
        raise UserError(
            f"candidate labels must be a list of names, not the string {names!r}; "
            "use parse_class_names for a comma-separated string"
        )
    if isinstance(names, (set, frozenset)):
        raise UserError("give the class names as a list: a set has no order, and the labels number them in order")
    names = list(names)
    not_text = [i for i, n in enumerate(names) if not isinstance(n, str)]
    if not_text:
        i = not_text[0]
        raise UserError(
            f"class name number {i + 1} of {len(names)} is a {type(names[i]).__name__}, not a string; give the names "
            "as strings (an image among them? images go first: predict(image, names))"
        )
    names = [n.strip() for n in names]
    if not names:
        raise UserError('no class names given; name at least one class, e.g. "cat, dog, grass"')
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise UserError(
            f"class name number {', '.join(map(str, empty))} of {len(names)} is empty "
            "(two commas in a row, or a comma at the end?)"
        )
    for i, name in enumerate(names):
        if len(name) > MAX_NAME_LENGTH:
            raise UserError(
                f"class name number {i + 1} is {len(name)} characters long; CLIP reads only about 60 words "
                f"(at most {MAX_NAME_LENGTH} characters are accepted): shorten it"
            )
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise UserError(f"class name number {i + 1} ({name!r}) holds a control character (tab, newline, ...)")
    seen: dict[str, str] = {}
    for name in names:
        if name.casefold() in seen:
            raise UserError(
                f"class name {name!r} is given twice (as {seen[name.casefold()]!r} and {name!r}); "
                "each name must be given once"
            )
        seen[name.casefold()] = name
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names given; at most {MAX_CLASSES} fit in a label image")
    return names


@dataclass
class Prediction:
    """A segmentation at the image's own resolution (after EXIF orientation)."""

    names: list[str]
    labels: np.ndarray  # (H, W) uint8: index into `names`, 255 = background
    pixel_share: np.ndarray  # (C,) fraction of the image labelled with each name
    mean_score: np.ndarray  # (C,) mean probability of each name over the pixels labelled with it (0 where none)
    max_score: np.ndarray  # (C,) highest probability of each name anywhere in the image
    background_share: float  # fraction of background pixels (0 unless a background threshold was given)
    scores: np.ndarray | None  # (C, H, W) probabilities, when asked for


class Segmenter:
    """A Cascade-CLIP model and a CLIP text tower that segment images into any list of class names.

    Args:
        model: the segmentation model (it runs on given class embeddings; its own text tower is not called); it is
            switched in place to the fast computation of the same function (`CascadeCLIP.set_fast_path`).
        text_encoder: the CLIP text tower that embeds class names.
        device: where to run; default CUDA when available, else CPU.
        templates: "multi" (15-template ensemble, default) or "single" ("a photo of a {}").
        mode: "slide" (512 windows, stride 426, as the authors evaluate) or "whole" (one forward per image).
        short_side: the image's short side is resized to this before inference (default: the model's crop, 512).
        crop, stride: sliding-window size and step (default: the model's crop and 426/512 of it).
        window_batch: sliding windows run together. These five are checked as a `TestConfig` is (UserError: e.g. a
            stride larger than the window, or a short side smaller than the window in slide mode).
        bf16: run the image encoder in bfloat16, its weights converted in place (the head stays in fp32).
        cache_dir: folder of the text-embedding cache (default: see `utils.cache_dir`).
        keep_freed_memory: have glibc keep freed memory for reuse (`inference.fast_path.keep_freed_memory`), which
            makes repeated forwards on the CPU faster. It changes the whole process, for good, so it is off unless
            asked for; the segmenter changes nothing else outside itself.
    """

    def __init__(
        self,
        model: CascadeCLIP,
        text_encoder: TextEncoder,
        device: str | torch.device | None = None,
        templates: str = "multi",
        mode: str = "slide",
        short_side: int | None = None,
        crop: int | None = None,
        stride: int | None = None,
        window_batch: int = 8,
        bf16: bool = False,
        cache_dir: str | Path | None = None,
        keep_freed_memory: bool = False,
    ):
        check_whole_numbers(short_side=short_side, crop=crop, stride=stride, window_batch=window_batch)
        for name, flag in (("bf16", bf16), ("keep_freed_memory", keep_freed_memory)):
            if not isinstance(flag, bool):
                raise UserError(f"{name} must be True or False, got {flag!r}")
        crop = model.cfg.image_encoder.image_size if crop is None else crop
        # The inference settings as a test protocol, so that they are checked by the configuration's rules.
        self.protocol = validate(
            TestConfig(
                mode=mode,
                short_side=crop if short_side is None else short_side,
                crop_size=crop,
                stride=max(1, round(crop * 426 / 512)) if stride is None else stride,
                window_batch=window_batch,
            ),
            names=PROTOCOL_KEYWORDS,
        )
        check_short_side(self.protocol.short_side)
        if crop % model.cfg.image_encoder.patch_size:
            raise UserError(f"crop {crop} must be a multiple of the patch size {model.cfg.image_encoder.patch_size}")
        if text_encoder.cfg.output_dim != model.cfg.head.dim:
            raise CheckpointError(
                f"the text tower's embeddings have {text_encoder.cfg.output_dim} dimensions but the "
                f"model's class queries have {model.cfg.head.dim}: they come from different CLIPs"
            )
        self.device = check_device(device, "device") or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if keep_freed_memory and self.device.type == "cpu":
            _keep_freed_memory()
        # The fast path computes the reference's function (fp32 logits within 1e-4, tests/test_fast_path.py).
        self.model = model.eval().to(self.device).set_fast_path(True)
        if bf16:
            self.model.store_encoder_in_bf16()
        self.text_encoder = text_encoder.eval().to(self.device)
        self.templates = templates
        self.short_side = self.protocol.short_side
        self.bf16 = bf16
        self.text_cache = TextEmbeddingCache(
            self.text_encoder, templates_for(templates), Path(cache_dir) if cache_dir else default_cache_dir()
        )
        self.image: Image.Image | None = None  # the image of `set_image`, upright 8-bit RGB
        self._encoded: EncodedImage | None = None

    @property
    def mode(self) -> str:
        """ "slide" or "whole"; setting it checks it as the constructor does. An image given to `set_image` before
        keeps the windows it was encoded with until it is set again."""
        return self.protocol.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.protocol = validate(dataclasses.replace(self.protocol, mode=mode), names=PROTOCOL_KEYWORDS)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        clip_weights: str | Path | None = None,
        device: str | torch.device | None = None,
        **options,
    ) -> Segmenter:
        """Load a Cascade-CLIP checkpoint: ours (.safetensors) or one of the authors' .pth files (a pickle: only
        files you trust). The text tower comes from `clip_weights` (OpenAI's ViT-B-16.pt, or it converted) when
        given, else from the checkpoint. `options` go to the constructor."""
        model, text_encoder = load_segmentation_weights(checkpoint, clip_weights)
        return cls(model, text_encoder, device, **options)

    @classmethod
    def with_random_weights(
        cls, cfg: ModelConfig | None = None, device: str | torch.device | None = None, seed: int = 0, **options
    ) -> Segmenter:
        """For smoke tests only: a model with random weights (ViT-B/16 sizes unless `cfg`). Its output is noise."""
        cfg = cfg or ModelConfig()
        cfg = dataclasses.replace(cfg, text_encoder=cfg.text_encoder or TextEncoderConfig())
        warnings.warn("the segmenter has RANDOM weights: its segmentations are meaningless", stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same weights every time, so cached text embeddings stay valid
            model = CascadeCLIP(cfg)
        return cls(model, model.text_encoder, device, **options)

    def class_embeddings(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(C, D) unit-norm embeddings of `names`, from the cache where possible, else from the text tower (in fp32
        also for bf16 inference: the embeddings are cached for either)."""
        with fast_inference(self.device, "fp32"):
            return self.text_cache.embeddings(list(names))

    def set_image(self, image: str | Path | Image.Image | np.ndarray) -> None:
        """Run the image encoder on `image` (each sliding window, in slide mode) and keep its output, so that
        `predict(candidate_labels)` and `self(candidate_labels)` run only the head. Replaces the previous image."""
        rgb = load_image(image)
        with self._inference():
            test = self.protocol
            self._encoded = encode_image(
                self.model,
                self.preprocess(rgb).to(self.device),
                test.mode,
                test.crop_size,
                test.stride,
                test.window_batch,
            )
        self.image = rgb

    @torch.inference_mode()
    def predict(
        self,
        image: str | Path | Image.Image | np.ndarray | list[str],
        candidate_labels: list[str] | tuple[str, ...] | None = None,
        background: float | None = None,
        scores: bool = True,
        scores_dtype: type = np.float32,
    ) -> Prediction:
        """Label map, per-class figures and (if `scores`) probability maps of one image, at its own resolution.

        `predict(image, candidate_labels)` runs the whole model on `image`; `predict(candidate_labels)` only the
        head, on the image given to `set_image`. The two give the same numbers up to float rounding.

        Args:
            image: a path, a PIL image or an (H, W[, C]) array (see `data.images.load_image`).
            candidate_labels: the class names, any words.
            background: if given, pixels where no name's probability reaches it are labelled 255 (background).
        """
        image, names = self._image_and_names(image, candidate_labels)
        check_background(background, names)
        check_scores_dtype(scores_dtype)
        if image is not None:
            rgb = load_image(image)
            items = [(None, self.preprocess(rgb), (rgb.height, rgb.width))]
            return next(self.predict_many(items, names, background, scores, scores_dtype))[1]
        text = self.class_embeddings(names).to(self.device)
        with self._inference():
            working = decode_scores(self.model, self._encoded, text)
            size = (self.image.height, self.image.width)
            return _checked(_summarize(working[0].float(), size, names, background, scores, scores_dtype))

    def predict_many(
        self,
        images: Iterable[tuple[object, torch.Tensor, tuple[int, int]]],
        candidate_labels: list[str] | tuple[str, ...],
        background: float | None = None,
        scores: bool = True,
        scores_dtype: type = np.float32,
    ) -> Iterator[tuple[object, Prediction]]:
        """(key, Prediction) of many images, as each completes; the windows of consecutive images go through the
        model together, `window_batch` at a time (`inference.window_stream`).

        Args:
            images: (key, (1, 3, h, w) tensor made by `preprocess`, (H, W) size of the prediction) per image; the
                key is anything that identifies the image to the caller.
            candidate_labels, background, scores, scores_dtype: as for `predict`.

        The names and settings are checked at the call, before any image is taken.
        """
        names = check_class_names(candidate_labels)
        check_background(background, names)
        check_scores_dtype(scores_dtype)
        return self._predictions(images, names, background, scores, scores_dtype)

    def _predictions(self, images, names: list[str], background, scores: bool, scores_dtype) -> Iterator:
        text = self.class_embeddings(names).to(self.device)
        waiting: dict[int, tuple[object, tuple[int, int]]] = {}  # key and prediction size of the images in flight

        def numbered():
            for number, item in enumerate(images):
                key, tensor, size = _checked_item(number, item)
                check_working_size(tensor.shape[-2:], size, self.short_side)
                waiting[number] = key, size
                yield number, tensor

        test = self.protocol
        stream = stream_scores(self.model, numbered(), text, test.mode, test.crop_size, test.stride, test.window_batch)
        while True:
            with self._inference():  # not around the caller's work between two images
                done = next(stream, None)
                if done is None:
                    return
                number, working = done
                key, size = waiting.pop(number)
                prediction = _checked(_summarize(working[0].float(), size, names, background, scores, scores_dtype))
            yield key, prediction

    def __call__(
        self,
        image: str | Path | Image.Image | np.ndarray | list,
        candidate_labels: list[str] | tuple[str, ...] | None = None,
        background: float | None = None,
    ) -> list[dict] | list[list[dict]]:
        """One `{"label", "score", "mask"}` per candidate label, in the order given; a list of such lists for a
        list of images. `self(candidate_labels)` segments the image given to `set_image`.

        "mask" is a PIL "L" image of the image's size, 255 where the label wins and 0 elsewhere; the masks partition
        the image. "score" is the label's mean probability over its mask (0.0 for an empty mask). With a background
        threshold a last entry labelled "background" (score None) holds the pixels no label claims.
        """
        if candidate_labels is not None and isinstance(image, (list, tuple)):
            return [self(item, candidate_labels, background) for item in image]
        prediction = self.predict(image, candidate_labels, background, scores=False)
        segments = [
            {"label": name, "score": float(prediction.mean_score[i]), "mask": _mask(prediction.labels == i)}
            for i, name in enumerate(prediction.names)
        ]
        if background is not None:
            segments.append(
                {"label": BACKGROUND_NAME, "score": None, "mask": _mask(prediction.labels == BACKGROUND_LABEL)}
            )
        return segments

    def _image_and_names(self, image, candidate_labels) -> tuple[object | None, list[str]]:
        """(image, checked names) of a call `f(image, names)`, or (None, names) of a call `f(names)` after
        `set_image`."""
        if candidate_labels is not None:
            if image is None and self._encoded is None:
                raise UserError("no image to segment: call predict(image, candidate_labels), or set_image(image) first")
            return image, check_class_names(candidate_labels)
        if not isinstance(image, (list, tuple)):
            raise UserError(
                "no class names given: call predict(image, candidate_labels), or set_image(image) and then "
                "predict(candidate_labels)"
            )
        if self._encoded is None:
            raise UserError("no image to segment: call set_image(image) first, or predict(image, candidate_labels)")
        return None, check_class_names(image)

    def _inference(self):
        return fast_inference(self.device, "bf16" if self.bf16 else "fp32")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, h, w) normalised tensor of an RGB image at the inference resolution (short side `short_side`)."""
        working = short_side_size(image.height, image.width, self.short_side)
        check_working_size(working, (image.height, image.width), self.short_side)
        return test_image_tensor(image, self.short_side)


def _checked_item(number: int, item: object) -> tuple[object, torch.Tensor, tuple[int, int]]:
    """(key, tensor, size) of item `number` given to `Segmenter.predict_many`; UserError when it is not one."""
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise UserError(
            f"predict_many: item {number} must be (key, tensor from preprocess, (H, W)), got {type(item).__name__}"
        )
    key, tensor, size = item
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tuple(tensor.shape[:2]) != (1, 3):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise UserError(f"predict_many: item {number}'s image must be a (1, 3, h, w) tensor (preprocess), got {shape}")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(_is_whole_number(v) and v > 0 for v in size):
        raise UserError(f"predict_many: item {number}'s size must be (H, W) in pixels, got {size!r}")
    return key, tensor, tuple(size)


def _is_whole_number(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is an Integral too


def check_background(background: float | None, names: list[str] = ()) -> None:
    """UserError unless `background` is None (no background) or a probability strictly between 0 and 1, and no name
    is the background's."""
    if background is None:
        return
    if BACKGROUND_NAME in (name.casefold() for name in names):
        raise UserError(f"a class is named {BACKGROUND_NAME!r} and a background threshold is set; drop one of them")
    if isinstance(background, (str, bytes, bool)) or not _is_number(background) or not 0 < float(background) < 1:
        raise UserError(f"the background threshold must be a probability between 0 and 1, got {background!r}")


def _is_number(value: object) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def check_whole_numbers(**values: object) -> None:
    """UserError naming the first of `values` (name -> value; None: the default) that is not a whole number."""
    for name, value in values.items():
        if value is not None and not _is_whole_number(value):
            raise UserError(f"{name} must be a whole number, got {value!r}")


def check_scores_dtype(dtype: object) -> None:
    """UserError unless `dtype` names a NumPy float type: probabilities in an integer type would all be 0."""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        kind = None
    if kind != "f":
        raise UserError(f"scores_dtype must be a NumPy float type (np.float16, np.float32, np.float64), got {dtype!r}")


def check_short_side(short_side: int) -> None:
    """UserError when every image would be too large at inference: its short side alone makes short_side^2 pixels."""
    if short_side**2 > MAX_WORKING_PIXELS:
        raise UserError(
            f"a short side of {short_side} makes every image at least {short_side}x{short_side} at inference, too "
            f"large to hold the scores of every class; choose a short side of at most {math.isqrt(MAX_WORKING_PIXELS)}"
        )


def check_working_size(working: tuple[int, int], size: tuple[int, int], short_side: int) -> None:
    """UserError when an image of `size` (H, W) would be too large at its inference size `working` (h, w)."""
    if working[0] * working[1] > MAX_WORKING_PIXELS:
        raise UserError(
            f"the image ({size[1]}x{size[0]}) would be {working[1]}x{working[0]} at inference (short side "
            f"{short_side}): too large to hold the scores of every class. Crop it into pieces, or choose a smaller "
            "short side"
        )


def _checked(prediction: Prediction) -> Prediction:
    """`prediction`, unless its scores hold NaN: a NaN anywhere in a class's map makes its maximum NaN (and scores are
    probabilities, never infinite), so the per-class maxima tell without another pass over the maps."""
    if not np.isfinite(prediction.max_score).all():
        raise UserError(
            "the model's scores are not finite numbers (NaN or infinity): its weights or the class embeddings "
            "are damaged. Check the weights file (or its text tower) and the embedding cache"
        )
    return prediction


def _mask(selected: np.ndarray) -> Image.Image:
    return Image.fromarray(selected.astype(np.uint8) * 255, mode="L")


def _bilinear_taps(out_len: int, in_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and weight of i1 per output position, computed as PyTorch's bilinear resize does
    (float32 arithmetic, align_corners=False), so that strips equal the whole map's resize up to float rounding."""
    scale = torch.tensor(in_len / out_len, dtype=torch.float32, device=device)
    position = ((torch.arange(out_len, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    low = position.long().clamp(max=in_len - 1)
    return low, (low + 1).clamp(max=in_len - 1), (position - low).clamp(0, 1)


def upsampled_strips(scores: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 26):
    """Yield (row0, row1, (C, row1-row0, W) strip) of `scores` (C, h, w) resized bilinearly to `size` = (H, W).

    The whole map at once (F.interpolate, align_corners=False) when the result is no larger than `scores` or
    `max_elements` (256 MB in fp32: a 1080p photo with 30 classes); otherwise strip by strip, so that a large photo
    with many classes never holds every full-resolution score map at once. A strip blends its source rows, then
    resizes along the width only.
    """
    classes = scores.shape[0]
    if classes * size[0] * size[1] <= max(max_elements, scores.numel()):
        yield 0, size[0], F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        return
    rows_low, rows_high, row_weight = _bilinear_taps(size[0], scores.shape[1], scores.device)
    by_row = scores.permute(1, 2, 0)  # (h, w, C): a row of every class is one block in the model's layout
    step = max(1, max_elements // (classes * size[1]))
    for y0 in range(0, size[0], step):
        y1 = min(y0 + step, size[0])
        rows = torch.lerp(by_row[rows_low[y0:y1]], by_row[rows_high[y0:y1]], row_weight[y0:y1].view(-1, 1, 1))
        strip = F.interpolate(
            rows.permute(2, 0, 1)[None], size=(y1 - y0, size[1]), mode="bilinear", align_corners=False
        )
        yield y0, y1, strip[0]


def _summarize(
    working: torch.Tensor,
    size: tuple[int, int],
    names: list[str],
    background: float | None,
    keep_scores: bool,
    scores_dtype,
) -> Prediction:
    """Labels, shares, mean and max scores at full resolution from (C, h, w) working-resolution scores."""
    classes = len(names)
    labels = np.empty(size, dtype=np.uint8)
    full = np.empty((classes, *size), dtype=scores_dtype) if keep_scores else None
    counts = torch.zeros(classes + 1, dtype=torch.float64, device=working.device)  # last bin: background
    sums = torch.zeros(classes + 1, dtype=torch.float64, device=working.device)
    highest = torch.full((classes,), -torch.inf, device=working.device)
    for y0, y1, strip in upsampled_strips(working, size):
        best, winner = strip.max(0)
        if background is not None:
            winner = torch.where(best < background, classes, winner)
        counts += torch.bincount(winner.flatten(), minlength=classes + 1)
        sums += torch.bincount(winner.flatten(), weights=best.flatten().double(), minlength=classes + 1)
        highest = torch.maximum(highest, strip.amax(dim=(1, 2)))  # NaN, if any, propagates
        labels[y0:y1] = torch.where(winner == classes, BACKGROUND_LABEL, winner).cpu().numpy()
        if full is not None:
            full[:, y0:y1] = strip.cpu().numpy()
    total = size[0] * size[1]
    share = (counts / total).cpu().numpy()
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), 0.0).cpu().numpy()
    return Prediction(
        names=list(names),
        labels=labels,
        pixel_share=share[:classes].astype(np.float64),
        mean_score=mean[:classes].astype(np.float64),
        max_score=highest.cpu().numpy().astype(np.float64),
        background_share=float(share[classes]),
        scores=full,
    )
