"""Sampling from the GPT prior: KV-cache decoding, temperature, top-k, top-p and classifier-free guidance.

Order per step (as in the VQGAN-LC / taming samplers and HF ``generate``): CFG combination ->
temperature -> top-k -> top-p -> softmax -> one draw (or argmax when ``temperature == 0``).
Logits are over image ids only (``[0, n_codes)``), so class ids are never sampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from .gpt import GPT

log = logging.getLogger(__name__)

TopK = int | float | None
DecodeMode = Literal["cache", "recompute"]


@dataclass(frozen=True)
class SamplingConfig:
    """How ids are drawn.

    Args:
        temperature: logits are divided by it; ``0`` = greedy (argmax).
        top_k: keep the ``k`` highest logits: an int ``k >= 1``, a float in ``(0, 1)`` = that fraction of
            the vocabulary (VQGAN-LC: 0.1, i.e. 10,000 of 100,000), or None/0 = off.
        top_p: nucleus sampling: keep the smallest set of highest-probability ids whose total probability
            is ``>= top_p`` (DiGIT stage 2: 0.8); None = off.
        cfg_scale: classifier-free guidance ``uncond + s * (cond - uncond)`` with the null class; None or
            1.0 = off (plain conditional sampling, one forward per step).
    """

    temperature: float = 1.0
    top_k: TopK = 0.1
    top_p: float | None = None
    cfg_scale: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None:
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0, got {self.top_k}")
            if isinstance(self.top_k, float) and self.top_k >= 1.0 and not self.top_k.is_integer():
                raise ValueError(f"top_k must be an id count or a fraction in (0, 1), got {self.top_k}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale is not None and self.cfg_scale != 1.0


def resolve_top_k(top_k: TopK, vocab: int) -> int | None:
    """``top_k`` as an id count for a ``vocab``-sized distribution (None = no filter).

    A float in (0, 1) is a fraction of the vocabulary, rounded, at least 1; an int is clipped to ``vocab``.
    """
    if top_k is None or top_k == 0:
        return None
    if isinstance(top_k, float) and top_k < 1.0:
        return max(1, int(round(top_k * vocab)))
    k = int(top_k)
    return None if k >= vocab else k


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Set every logit below the ``k``-th largest of its row to ``-inf``. ``(..., V)`` -> ``(..., V)``.

    Ids tied with the ``k``-th value are kept, so the support can exceed ``k`` only on exact ties.
    """
    if k is None or k >= logits.shape[-1]:
        return logits
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of highest-probability ids whose probability sum is ``>= p``.

    ``(..., V)`` -> ``(..., V)`` with the other logits at ``-inf``; the most likely id is always kept.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass strictly before each id
    drop_sorted = before >= p  # the set is complete before this id
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k, top-p applied to ``(B, V)`` logits (CFG already combined)."""
    logits = logits.float()
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    logits = top_k_filter(logits, resolve_top_k(sampling.top_k, logits.shape[-1]))
    return top_p_filter(logits, sampling.top_p)


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row from ``(B, V)`` logits -> ``(B,)`` int64.

    Same distribution as ``filter_logits(...).softmax(-1)``, computed on the ``k`` candidates only:
    ``topk`` (sorted) -> top-p on the sorted candidates -> softmax -> inverse-CDF draw. With top-k,
    exactly ``k`` candidates are kept (``top_k_filter`` also keeps exact ties with the ``k``-th value).
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    k = resolve_top_k(sampling.top_k, logits.shape[-1])
    index = None
    if k is not None:
        logits, index = torch.topk(logits, k, dim=-1)  # sorted, descending
    if sampling.top_p is not None and sampling.top_p < 1.0:
        if index is None:
            logits, index = torch.sort(logits, dim=-1, descending=True)
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs.cumsum(-1) - probs >= sampling.top_p, float("-inf"))
    choice = _draw(logits.softmax(-1), generator)
    return choice if index is None else index.gather(-1, choice[:, None]).squeeze(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One inverse-CDF draw per row of ``(B, n)`` probabilities (several times faster than
    ``torch.multinomial`` on CPU); ids with probability 0 are never drawn."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def _labels_tensor(gpt: GPT, labels: torch.Tensor | list[int] | int | None, n: int | None) -> tuple[torch.Tensor | None, int]:
    if labels is None:
        if n is None:
            raise ValueError("pass n (the number of samples) or labels")
        return None, n
    t = torch.as_tensor(labels, dtype=torch.long, device=gpt.device).reshape(-1)
    if n is not None and t.numel() == 1:
        t = t.expand(n).clone()
    if n is not None and t.numel() != n:
        raise ValueError(f"got {t.numel()} labels for n={n}")
    return t, t.numel()


@torch.inference_mode()
def generate(
    gpt: GPT,
    n: int | None = None,
    *,
    labels: torch.Tensor | list[int] | int | None = None,
    prefix: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    mode: DecodeMode = "cache",
) -> torch.Tensor:
    """Sample ``(B, h, w)`` int64 target ids in ``[0, n_codes)`` from ``gpt``.

    Args:
        n: number of samples (with a single label, that label ``n`` times).
        labels: ``(B,)`` class indices (-1 = null class); None = unconditional (the null token).
        prefix: ``(B, prefix_len)`` or ``(B, ph, pw)`` prefix ids for prefix-conditional models.
        sampling: temperature / top-k / top-p / CFG (default ``SamplingConfig()``: top-k 10% of the vocabulary).
        generator, seed: the random source (``seed`` makes a generator on the model's device).
        mode: ``cache`` (KV cache, one new position per forward) or ``recompute`` (the whole sequence
            every step; same distribution, for testing and benchmarks).
    """
    sampling = sampling or SamplingConfig()
    cfg = gpt.config
    labels_t, b = _labels_tensor(gpt, labels, n if prefix is None or n is not None else prefix.shape[0])
    if prefix is not None:
        prefix = prefix.to(gpt.device).reshape(prefix.shape[0], -1)
        if prefix.shape[0] != b:
            raise ValueError(f"prefix has {prefix.shape[0]} rows for {b} samples")
    if generator is None and seed is not None:
        generator = torch.Generator(gpt.device).manual_seed(seed)
    guided = sampling.guided
    if guided:
        if not cfg.class_conditional or cfg.null_id is None:
            raise ValueError("classifier-free guidance needs a class-conditional GPT with a null class "
                             "(train with class_dropout > 0)")
        if labels_t is None:
            raise ValueError("classifier-free guidance needs labels")
        # rows [0, B) conditional, [B, 2B) null class; the prefix (if any) is shared
        labels_run: torch.Tensor | None = torch.cat([labels_t, torch.full_like(labels_t, -1)])
        prefix_run = None if prefix is None else torch.cat([prefix, prefix])
    else:
        labels_run, prefix_run = labels_t, prefix
    rows = 2 * b if guided else b

    def combine(logits: torch.Tensor) -> torch.Tensor:
        return apply_cfg(logits[:b], logits[b:], sampling.cfg_scale) if guided else logits  # type: ignore[arg-type]

    was_training = gpt.training
    gpt.eval()
    out = torch.empty(b, cfg.seq_len, dtype=torch.long, device=gpt.device)
    try:
        if mode == "cache":
            cache = gpt.new_cache(rows)
            logits = gpt.prefill(cache, rows, labels_run, prefix_run)
            for i in range(cfg.seq_len):
                out[:, i] = sample_next(combine(logits), sampling, generator)
                if i + 1 < cfg.seq_len:
                    step = torch.cat([out[:, i], out[:, i]]) if guided else out[:, i]
                    logits = gpt.decode_step(cache, step)
        elif mode == "recompute":
            for i in range(cfg.seq_len):
                ids = torch.cat([out[:, :i], out[:, :i]]) if guided else out[:, :i]
                logits = gpt(ids, labels_run, prefix_run, last_only=True)
                out[:, i] = sample_next(combine(logits), sampling, generator)
        else:
            raise ValueError(f"mode must be 'cache' or 'recompute', got {mode!r}")
    finally:
        gpt.train(was_training)
    return out.reshape(b, *cfg.grid)


__all__ = [
    "DecodeMode",
    "SamplingConfig",
    "TopK",
    "apply_cfg",
    "filter_logits",
    "generate",
    "resolve_top_k",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
