"""The NAR (MaskGIT) stage 2 of DiGIT: masked-token training and iterative parallel decoding.

The model is a ``GPT`` with ``GPTConfig(attention="bidirectional")``: the same blocks without the causal
mask over ``[prefix] + [cond] + x_0 .. x_{T-1}``, where masked ids are the ``[MASK]`` input id
(``config.mask_id``); ``logits[:, i]`` (after the cond position) predicts ``x_i``.

Training (DiGIT ``model_nar.py``, audit N2): per row ``floor(T * cos(u * pi / 2)) + 1`` positions are
masked (``u ~ U(0, 1)``, at most ``T``); cross-entropy with label smoothing (0.1 in DiGIT's config) over
the masked positions only. Label smoothing is torch's (``eps / V`` on every id); fairseq's spreads
``eps / (V - 1)`` over the other ids, a difference of order ``eps / V``.

Decoding (audit N3): ``steps`` iterations (8) from an all-masked map. Each step draws an id for every
masked position from ``softmax(logits / temperature)`` (argmax at temperature 0), then keeps
``floor(T * cos(pi / 2 * (t + 1) / steps))`` positions masked, clamped to ``[1, #masked - 1]``: the ones
with the lowest ``log p(drawn id) + choice_temperature * (1 - (t + 1) / steps) * Gumbel``. Positions
decided earlier are never re-masked. The last step keeps every draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gpt import GPT

DIGIT_NAR_STEPS = 8
DIGIT_NAR_CHOICE_TEMPERATURE = 4.5
DIGIT_NAR_LABEL_SMOOTHING = 0.1


def _require_bidirectional(gpt: GPT) -> None:
    if not gpt.config.bidirectional:
        raise ValueError("MaskGIT training and decoding need a GPT with attention='bidirectional'")


# ----------------------------------------------------------------------------------------- training
def mask_count(u: torch.Tensor, length: int) -> torch.Tensor:
    """Masked positions per row for uniform draws ``u`` in [0, 1): ``floor(L * cos(u * pi / 2)) + 1``,
    clamped to ``[1, L]`` (``u = 0`` would give ``L + 1``)."""
    n = torch.floor(length * torch.cos(u.double() * (math.pi / 2))).long() + 1
    return n.clamp(1, length)


def random_mask(batch: int, length: int, *, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, L)`` bool, True = masked: ``mask_count(u, L)`` positions of each row, chosen uniformly."""
    u = torch.rand(batch, device=device, generator=generator)
    n = mask_count(u, length)
    order = torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)
    rank = order.argsort(dim=1)  # rank of each position in a random permutation
    return rank < n[:, None]


def maskgit_logits(gpt: GPT, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None,
                   prefix: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T)`` target ids with ``mask`` (B, T) bool -> ``(B, T, n_codes)`` logits of every position;
    masked positions are fed the ``[MASK]`` id (the ids there are ignored)."""
    _require_bidirectional(gpt)
    c = gpt.config
    ids = ids.to(gpt.device).long().reshape(ids.shape[0], -1)
    mask = mask.to(ids.device).reshape(ids.shape)
    if ids.shape[1] != c.seq_len:
        raise ValueError(f"expected {c.seq_len} target ids per row, got {ids.shape[1]}")
    inp = ids.masked_fill(mask, int(c.mask_id))
    known = inp[~mask]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) >= c.n_codes):
        raise ValueError(f"unmasked ids must lie in [0, {c.n_codes})")
    h = gpt.run_blocks(gpt.embed(inp, labels, prefix))[:, c.prefix_len + 1 :]
    return gpt.logits(h)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                         *, label_smoothing: float = DIGIT_NAR_LABEL_SMOOTHING) -> torch.Tensor:
    """Mean cross-entropy over the masked positions only (``logits`` (B, T, V), ``targets``/``mask`` (B, T))."""
    return F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing)


def maskgit_loss(gpt: GPT, ids: torch.Tensor, labels: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                 *, cond: torch.Tensor | None = None, label_smoothing: float = DIGIT_NAR_LABEL_SMOOTHING,
                 mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The MaskGIT training loss of a batch: draw ``random_mask`` (or take ``mask``), predict, and average
    the label-smoothed cross-entropy over the masked positions. ``cond`` replaces the class / null input
    ids (class dropout)."""
    _require_bidirectional(gpt)
    ids = ids.to(gpt.device).long().reshape(ids.shape[0], -1)
    if mask is None:
        mask = random_mask(ids.shape[0], ids.shape[1], device=ids.device, generator=generator)
    c = gpt.config
    inp = ids.masked_fill(mask, int(c.mask_id))
    h = gpt.run_blocks(gpt.embed(inp, labels, prefix, cond=cond))[:, c.prefix_len + 1 :]
    return masked_cross_entropy(gpt.logits(h), ids, mask, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class MaskGITSampling:
    """Decoding knobs; defaults are DiGIT's (``scripts/infer_stage2_nar.sh``, ``model_nar.py``)."""

    steps: int = DIGIT_NAR_STEPS
    temperature: float = 1.0
    choice_temperature: float = DIGIT_NAR_CHOICE_TEMPERATURE

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.temperature < 0 or self.choice_temperature < 0:
            raise ValueError("temperature and choice_temperature must be >= 0")


def mask_schedule(length: int, steps: int = DIGIT_NAR_STEPS) -> list[int]:
    """Masked positions left after each step of decoding ``length`` ids (the last entry is 0):
    ``floor(L * cos(pi / 2 * (t + 1) / steps))`` clamped to ``[1, masked - 1]``."""
    left, out = length, []
    for t in range(steps):
        if t == steps - 1:
            left = 0
        else:
            n = math.floor(length * math.cos(math.pi / 2 * (t + 1) / steps))
            left = max(1, min(left - 1, n))
        out.append(left)
    return out


def _gumbel(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-20, 1.0)
    return -torch.log((-torch.log(u)).clamp_min(1e-20))


@torch.no_grad()
def maskgit_generate(gpt: GPT, n: int, *, labels: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                     sampling: MaskGITSampling = MaskGITSampling(), generator: torch.Generator | None = None,
                     history: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``n`` id maps ``(n, h, w)`` decoded in ``sampling.steps`` parallel steps (see the module docstring).

    ``history``, when a list, receives the ``(n, T)`` mask (True = still masked) after each step.
    """
    _require_bidirectional(gpt)
    c = gpt.config
    T = c.seq_len
    dev = gpt.device
    ids = torch.zeros(n, T, dtype=torch.long, device=dev)
    masked = torch.ones(n, T, dtype=torch.bool, device=dev)
    schedule = mask_schedule(T, sampling.steps)
    for t, keep_masked in enumerate(schedule):
        logits = maskgit_logits(gpt, ids, masked, labels, prefix).float()
        if sampling.temperature == 0:
            drawn = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(n, T)
        drawn = torch.where(masked, drawn, ids)
        if keep_masked == 0:
            ids, masked = drawn, torch.zeros_like(masked)
        else:
            logp = torch.log_softmax(logits, dim=-1).gather(-1, drawn[..., None])[..., 0]
            ratio = (t + 1) / sampling.steps
            conf = logp + sampling.choice_temperature * (1 - ratio) * _gumbel(logp.shape, dev, generator)
            conf = conf.masked_fill(~masked, math.inf)  # decided positions stay decided
            lowest = conf.argsort(dim=1)[:, :keep_masked]
            masked = torch.zeros_like(masked).scatter_(1, lowest, True)
            ids = drawn.masked_fill(masked, 0)
        if history is not None:
            history.append(masked.clone())
    return ids.reshape(n, *c.grid)


__all__ = [
    "DIGIT_NAR_CHOICE_TEMPERATURE",
    "DIGIT_NAR_LABEL_SMOOTHING",
    "DIGIT_NAR_STEPS",
    "MaskGITSampling",
    "mask_count",
    "mask_schedule",
    "masked_cross_entropy",
    "maskgit_generate",
    "maskgit_logits",
    "maskgit_loss",
    "random_mask",
]
