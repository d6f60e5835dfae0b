"""Cascade-CLIP zero-shot semantic segmentation. `Segmenter` segments any image with any class names."""

__all__ = ["Segmenter"]


def __getattr__(name: str):
    # Imported on first use, so that the command line can set PyTorch's allocator options before PyTorch loads.
    if name == "Segmenter":
        from .segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
