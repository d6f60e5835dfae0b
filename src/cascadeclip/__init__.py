"""Cascade-CLIP zero-shot semantic segmentation. `Segmenter` segments any image with any class names."""

from .segmenter import Segmenter

__all__ = ["Segmenter"]
