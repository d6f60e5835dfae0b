"""Zero-shot evaluation: `evaluate` (the loop), `IoUAccumulator` (the metric), `results_table` (the printout)."""

from .evaluate import evaluate
from .metric import IoUAccumulator
from .report import results_table

__all__ = ["evaluate", "IoUAccumulator", "results_table"]
