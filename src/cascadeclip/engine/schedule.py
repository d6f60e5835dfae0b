"""The learning-rate schedule of the reference (docs/method.md, Training recipe): poly decay after a linear warm-up.

    poly(t)   = (lr0 - min_lr) * (1 - t / T) ** power + min_lr
    lr(t)     = poly(t) * (1 - (1 - t / W) * (1 - warmup_ratio))    for t < W
              = poly(t)                                             otherwise

with t the 0-based iteration about to run, T the total iterations and W the warm-up iterations. The schedule is a
function of t alone, so the iteration number is all the state a resumed run needs to continue it.
"""

from __future__ import annotations

from ..config import TrainConfig


def learning_rate(iteration: int, cfg: TrainConfig) -> float:
    poly = (cfg.lr - cfg.min_lr) * (1 - iteration / cfg.iters) ** cfg.poly_power + cfg.min_lr
    if iteration < cfg.warmup_iters:
        return poly * (1 - (1 - iteration / cfg.warmup_iters) * (1 - cfg.warmup_ratio))
    return poly
