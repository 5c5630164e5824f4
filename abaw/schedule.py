"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay.

`warmup_cosine(t, total, warmup, min_ratio)` is the multiplier at time `t` (in any unit:
epochs as a float for `train-heads`, optimiser steps for `finetune`); `cosine_with_warmup`
wraps it as a per-step `LambdaLR` function.
"""

from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(t: float, total: float, warmup: float, min_ratio: float = 0.0) -> float:
    """`t / warmup` during the warm-up, then cosine from 1 down to `min_ratio` at `total`."""
    if warmup > 0 and t < warmup:
        return t / warmup
    frac = min(1.0, max(0.0, (t - warmup) / max(total - warmup, 1e-9)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Per-step LR multiplier for `LambdaLR`: step k is at time k + 1 during the warm-up
    (so the first step does not run at LR 0) and at k after it."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return warmup_cosine(step + 1, total_steps, warmup_steps, min_ratio)
        return warmup_cosine(step, max(total_steps, warmup_steps + 1), warmup_steps, min_ratio)

    return f
