"""Sampling pipelines: ids from the GPT prior(s), images from the VQGAN-LC decoder.

1. VQGAN-LC + GPT (the paper's Table 4): a class-conditional GPT over VQGAN-LC ids -> ``decode``.
2. DiGIT two-stage: stage 1 samples DiGIT ids; stage 2, a GPT with those ids as prefix, samples
   VQGAN-LC ids; the VQGAN-LC decoder renders them. A bidirectional (MaskGIT, NAR) stage 2 is decoded
   with ``maskgit_generate`` (8 parallel steps) instead of token by token.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import to_uint8
from ..errors import TokenRangeError
from ..tokenizer import DecodingTokenizer
from .gpt import GPT, GPTConfig
from .maskgit import MaskGITSampling, maskgit_generate
from .sampling import SamplingConfig, generate

log = logging.getLogger(__name__)

# DiGIT's defaults: stage 1 top-k 200 (base), temperature 1; stage 2 top-p 0.8.
DIGIT_STAGE1_SAMPLING = SamplingConfig(top_k=200)
DIGIT_STAGE2_SAMPLING = SamplingConfig(top_k=None, top_p=0.8)
VQGAN_LC_SAMPLING = SamplingConfig(top_k=0.1)  # VQGAN-LC: top-k = 10% of the vocabulary
# DiGIT stage-1 top-k by model: base unconditional 200 (scripts/infer_stage1_ar.sh), base
# class-conditional 300 (scripts/infer_stage1_ar_classcond.sh), large (width 1536, 16k ids) 400 (README).
DIGIT_STAGE1_TOP_K = {"base": 200, "base-classcond": 300, "large": 400}


def digit_stage1_top_k(config: GPTConfig) -> int:
    """The official stage-1 top-k for a DiGIT GPT of this size and conditioning."""
    if config.n_embd >= 1536 or config.n_codes >= 16384:
        return DIGIT_STAGE1_TOP_K["large"]
    return DIGIT_STAGE1_TOP_K["base-classcond" if config.class_conditional else "base"]


@dataclass
class SampleOutput:
    """``images`` ``(B, 3, H, W)`` in [-1, 1]; ``ids`` ``(B, h, w)`` VQGAN-LC ids; ``labels`` ``(B,)``
    (-1 = none); ``prefix_ids`` ``(B, ph, pw)`` stage-1 DiGIT ids of the two-stage pipeline."""

    images: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor
    prefix_ids: torch.Tensor | None = None


def _labels(labels: int | Sequence[int] | torch.Tensor | None, n: int) -> torch.Tensor:
    if labels is None:
        return torch.full((n,), -1, dtype=torch.long)
    t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return t.expand(n).clone() if t.numel() == 1 else t


def _check_autoregressive(gpt: GPT) -> None:
    if gpt.config.bidirectional:
        raise ValueError("a bidirectional (MaskGIT) GPT is a DiGIT stage 2: pass it as --stage2 after a stage-1 GPT")


def _check_decoder(gpt: GPT, decoder: DecodingTokenizer) -> None:
    size = decoder.codebook_size
    if gpt.config.n_codes > size:
        raise TokenRangeError(f"the GPT samples ids in [0, {gpt.config.n_codes}) but the tokenizer has {size} codes; "
                              "use the tokenizer whose tokens trained the GPT")


def _gpt_labels(gpt: GPT, labels: torch.Tensor) -> torch.Tensor | None:
    if not gpt.config.class_conditional:
        if bool((labels >= 0).any()):
            raise ValueError("this GPT is unconditional; do not pass classes")
        return None
    return labels


@torch.no_grad()
def sample_images(
    gpt: GPT,
    decoder: DecodingTokenizer,
    *,
    n: int = 16,
    labels: int | Sequence[int] | torch.Tensor | None = None,
    sampling: SamplingConfig = VQGAN_LC_SAMPLING,
    seed: int = 0,
    batch_size: int = 16,
) -> SampleOutput:
    """Pipeline 1: sample ``n`` id maps from ``gpt`` and decode them with ``decoder`` (a ``VQGANLC``).

    ``labels``: one class for all, one per sample, or None (null class / unconditional).
    """
    _check_autoregressive(gpt)
    _check_decoder(gpt, decoder)
    lab = _labels(labels, n)
    gen = torch.Generator(gpt.device).manual_seed(seed)
    ids, images = [], []
    for s in range(0, n, batch_size):
        y = lab[s : s + batch_size]
        batch = generate(gpt, len(y), labels=_gpt_labels(gpt, y), sampling=sampling, generator=gen)
        dev = next(decoder.parameters()).device  # type: ignore[attr-defined]
        images.append(decoder.decode(batch.to(dev)).clamp(-1, 1).cpu())
        ids.append(batch.cpu())
        log.info("sampled %d/%d", min(s + batch_size, n), n)
    return SampleOutput(images=torch.cat(images), ids=torch.cat(ids), labels=lab)


@torch.no_grad()
def sample_two_stage(
    stage1: GPT,
    stage2: GPT,
    decoder: DecodingTokenizer,
    *,
    n: int = 16,
    labels: int | Sequence[int] | torch.Tensor | None = None,
    stage1_sampling: SamplingConfig = DIGIT_STAGE1_SAMPLING,
    stage2_sampling: SamplingConfig = DIGIT_STAGE2_SAMPLING,
    seed: int = 0,
    batch_size: int = 16,
    stage2_nar: MaskGITSampling | None = None,
) -> SampleOutput:
    """Pipeline 2 (DiGIT): stage 1 samples DiGIT ids, stage 2 samples VQGAN-LC ids with them as prefix,
    ``decoder`` renders images. Labels go to every stage that is class-conditional.

    A stage 2 with ``attention="bidirectional"`` (MaskGIT) decodes with ``stage2_nar`` (default: DiGIT's
    8 steps, choice temperature 4.5) and ignores ``stage2_sampling``."""
    c1, c2 = stage1.config, stage2.config
    if not c2.prefix_vocab:
        raise ValueError("stage 2 must be a prefix-conditional GPT (trained with --prefix-tokens)")
    if c2.prefix_len != c1.seq_len or c2.prefix_vocab < c1.n_codes:
        raise ValueError(f"stage 2 expects a prefix of {c2.prefix_len} ids in [0, {c2.prefix_vocab}) but stage 1 makes "
                         f"{c1.seq_len} ids in [0, {c1.n_codes}); pair models trained on the same DiGIT tokens")
    _check_autoregressive(stage1)
    _check_decoder(stage2, decoder)
    lab = _labels(labels, n)
    if not c1.class_conditional and not c2.class_conditional and bool((lab >= 0).any()):
        raise ValueError("neither stage is class-conditional; do not pass classes")
    gen1 = torch.Generator(stage1.device).manual_seed(seed)
    gen2 = torch.Generator(stage2.device).manual_seed(seed + 1)
    ids, prefixes, images = [], [], []
    for s in range(0, n, batch_size):
        y = lab[s : s + batch_size]
        p = generate(stage1, len(y), labels=y if c1.class_conditional else None, sampling=stage1_sampling, generator=gen1)
        if c2.bidirectional:
            v = maskgit_generate(stage2, len(y), labels=y if c2.class_conditional else None, prefix=p.to(stage2.device),
                                 sampling=stage2_nar or MaskGITSampling(), generator=gen2)
        else:
            v = generate(stage2, len(y), labels=y if c2.class_conditional else None, prefix=p.to(stage2.device),
                         sampling=stage2_sampling, generator=gen2)
        dev = next(decoder.parameters()).device  # type: ignore[attr-defined]
        images.append(decoder.decode(v.to(dev)).clamp(-1, 1).cpu())
        ids.append(v.cpu())
        prefixes.append(p.cpu())
        log.info("sampled %d/%d (two-stage)", min(s + batch_size, n), n)
    return SampleOutput(images=torch.cat(images), ids=torch.cat(ids), labels=lab, prefix_ids=torch.cat(prefixes))


def save_images(images: torch.Tensor, out: str | os.PathLike, labels: torch.Tensor | None = None,
                *, start: int = 0) -> list[Path]:
    """Write ``(B, 3, H, W)`` images in [-1, 1] as ``out/{class}_{index}.png`` (``sample_{index}.png`` without a class)."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    paths = []
    for i, img in enumerate(arr):
        y = None if labels is None else int(labels[i])
        name = f"class{y:04d}_{start + i:05d}.png" if y is not None and y >= 0 else f"sample_{start + i:05d}.png"
        Image.fromarray(img).save(out / name)
        paths.append(out / name)
    return paths


__all__ = [
    "DIGIT_STAGE1_SAMPLING",
    "DIGIT_STAGE2_SAMPLING",
    "SampleOutput",
    "VQGAN_LC_SAMPLING",
    "sample_images",
    "sample_two_stage",
    "save_images",
]
