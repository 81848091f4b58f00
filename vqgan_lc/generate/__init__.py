"""Generation: the DiGIT discriminative tokenizer and the autoregressive GPT prior over token files.

Inference only (``GPT``, ``generate``, the pipelines, ``DiscriminativeTokenizer``): no Lightning. The
GPT's training (``fit_gpt``, ``GPTLightningModule``, ``GPTTokenDataset``, ...) is ``vqgan_lc.train.gpt``.
"""

from __future__ import annotations

from .digit import DiscriminativeTokenizer, ExtractorSpec, build_dinov2
from .gpt import GPT, GPT_PRESETS, GPTConfig, KVCache, gpt_config, list_gpt_presets
from .pipeline import SampleOutput, sample_images, sample_two_stage, save_images
from .probe import ProbeResult, linear_probe, probe_features
from .sampling import (
    SamplingConfig,
    apply_cfg,
    filter_logits,
    generate,
    resolve_top_k,
    sample_next,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "GPT",
    "GPTConfig",
    "GPT_PRESETS",
    "DiscriminativeTokenizer",
    "ExtractorSpec",
    "KVCache",
    "ProbeResult",
    "SampleOutput",
    "SamplingConfig",
    "apply_cfg",
    "build_dinov2",
    "filter_logits",
    "generate",
    "gpt_config",
    "linear_probe",
    "list_gpt_presets",
    "probe_features",
    "resolve_top_k",
    "sample_images",
    "sample_next",
    "sample_two_stage",
    "save_images",
    "top_k_filter",
    "top_p_filter",
]
