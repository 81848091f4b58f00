"""Quantizers and the nearest-code search."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .base import CodebookQuantizer
from .baselines import EMAQuantizer, FCCosineQuantizer, FCQuantizer, VQQuantizer
from .lc import LCQuantizer, ProjectedCodebookQuantizer
from .output import QuantizerOutput, usage_perplexity
from .search import full_matrix_nearest_code, fused_search_available, nearest_code
from .usage import CodebookUsage


def build_quantizer(config: ModelConfig, *, inference_only: bool = False) -> CodebookQuantizer:
    """The quantizer named by ``config.quantizer.kind``; ``inference_only`` picks the LC export form."""
    q = config.quantizer
    assert q.distance is not None and q.codebook_weight is not None  # resolved by QuantizerConfig
    common: dict[str, Any] = dict(distance=q.distance, commit_weight=q.commit_weight, codebook_weight=q.codebook_weight)
    if inference_only:
        if q.kind != "lc":
            raise ConfigError(f"inference-only export exists for the 'lc' quantizer, not {q.kind!r}; load the full weights")
        return ProjectedCodebookQuantizer(q.codebook_size, config.embed_dim, latent_l2=q.projector == "none", **common)
    if q.kind == "lc":
        return LCQuantizer(q.codebook_size, q.codebook_dim, config.embed_dim, projector=q.projector,
                           codebook_trainable=q.codebook_trainable, **common)
    if q.kind == "vq":
        return VQQuantizer(q.codebook_size, config.embed_dim, **common)
    if q.kind == "fc":
        return FCQuantizer(q.codebook_size, config.embed_dim, **common)
    if q.kind == "fc-cosine":
        return FCCosineQuantizer(q.codebook_size, config.embed_dim, **common)
    return EMAQuantizer(
        q.codebook_size, config.embed_dim, decay=q.ema_decay, eps=q.ema_eps, update=q.ema_update, **common
    )


__all__ = [
    "CodebookQuantizer",
    "CodebookUsage",
    "EMAQuantizer",
    "FCCosineQuantizer",
    "FCQuantizer",
    "LCQuantizer",
    "ProjectedCodebookQuantizer",
    "QuantizerOutput",
    "VQQuantizer",
    "build_quantizer",
    "full_matrix_nearest_code",
    "fused_search_available",
    "nearest_code",
    "usage_perplexity",
]
