"""The learning-rate schedules of the package: linear warm-up, optional hold, half-cycle cosine (the
default everywhere), and fairseq's inverse square root (``inverse_sqrt_lr``, DiGIT's published recipe; a
``train-gpt`` option).

``VQGANLCModule`` (MAE's ``util/lr_sched.py``, as the official VQGAN-LC, indexed by generator step)
and ``GPTLightningModule`` (minGPT-style, as the official VQGAN-LC GPT, indexed by optimizer step)
both set ``lr = base_lr * lr_factor(step, ...)`` on their optimizers before every step (nanoGPT's
way): no scheduler object, nothing to save or restore besides the step counter.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

WarmupStart = Literal["zero", "one_step"]
"""Where the linear warm-up starts: ``zero`` (MAE, VQGAN-LC: the very first step has learning rate 0,
factor ``step / warmup_steps``) or ``one_step`` (minGPT, the official GPT: ``(step + 1) / warmup_steps``)."""


def lr_factor(
    step: int,
    *,
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float = 0.0,
    hold_until: int | None = None,
    warmup_start: WarmupStart = "zero",
) -> float:
    """Multiplier of the base learning rate at step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (see ``WarmupStart``), then 1 until ``hold_until`` (default:
    the end of the warm-up; never before it), then a half-cycle cosine from 1 down to
    ``min_lr_ratio`` at ``max_steps``; constant ``min_lr_ratio`` afterwards.
    """
    if step < warmup_steps:
        return (step + (1 if warmup_start == "one_step" else 0)) / warmup_steps
    start = warmup_steps if hold_until is None else max(hold_until, warmup_steps)
    if step < start:
        return 1.0
    span = max(1, max_steps - start)
    progress = min(1.0, (step - start) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def inverse_sqrt_lr(step: int, *, lr: float, warmup_steps: int, warmup_init_lr: float = 0.0) -> float:
    """fairseq's ``inverse_sqrt`` schedule (DiGIT's stages 1 and 2) at update ``step`` (0-based: the number
    of updates already done, fairseq's ``num_updates``).

    Linear from ``warmup_init_lr`` at step 0 to ``lr`` at ``warmup_steps``, then ``lr * sqrt(warmup_steps
    / step)``: the learning rate halves every time the step count quadruples and never reaches 0. Without
    warm-up (``warmup_steps = 0``) it is ``lr`` at step 0 and ``lr / sqrt(step)`` after.
    """
    if step < warmup_steps:
        return warmup_init_lr + step * (lr - warmup_init_lr) / warmup_steps
    return lr * math.sqrt(max(warmup_steps, 1) / max(step, 1))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer`` (Lightning's wrapper is an instance too)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["WarmupStart", "inverse_sqrt_lr", "lr_factor", "set_lr"]
