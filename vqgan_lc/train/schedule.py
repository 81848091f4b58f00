"""Learning-rate schedule of VQGAN-LC (MAE's ``util/lr_sched.py``), indexed by generator step."""

from __future__ import annotations

import math


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at generator step ``step`` (0-based).

    Linear warm-up from 0 (``step / warmup_steps``; the very first step has learning rate 0, as in
    the official code), then a half-cycle cosine from 1 down to ``min_lr_ratio`` at ``max_steps``;
    constant ``min_lr_ratio`` afterwards.
    """
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
