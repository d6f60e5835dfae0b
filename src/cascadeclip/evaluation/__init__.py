"""Zero-shot evaluation: `evaluate` (a split, as `cascade-clip test` and the trainer run it), `IoUAccumulator` (the
metric), `results_table` (the printout)."""

from .evaluate import class_text, evaluate, evaluate_samples, evaluation_share
from .metric import IoUAccumulator
from .report import results_table

__all__ = ["class_text", "evaluate", "evaluate_samples", "evaluation_share", "IoUAccumulator", "results_table"]
