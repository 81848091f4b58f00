"""Generation: the autoregressive GPT prior over token files, sampling and the sampling pipelines.

The DiGIT discriminative tokenizer is a tokenizer and lives beside the model (``vqgan_lc.digit``).
Inference (``GPT``, ``generate``, the pipelines) needs no Lightning. The GPT's training (``fit_gpt``,
``GPTLightningModule``, ``GPTTokenDataset``, ...) is ``vqgan_lc.train.gpt``.
"""

from __future__ import annotations

from .gpt import GPT, GPT_PRESETS, GPTConfig, KVCache, gpt_config, list_gpt_presets
from .maskgit import MaskGITSampling, mask_count, mask_schedule, maskgit_generate, maskgit_loss
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
    "KVCache",
    "MaskGITSampling",
    "ProbeResult",
    "SampleOutput",
    "SamplingConfig",
    "apply_cfg",
    "filter_logits",
    "generate",
    "gpt_config",
    "linear_probe",
    "list_gpt_presets",
    "mask_count",
    "mask_schedule",
    "maskgit_generate",
    "maskgit_loss",
    "probe_features",
    "resolve_top_k",
    "sample_images",
    "sample_next",
    "sample_two_stage",
    "save_images",
    "top_k_filter",
    "top_p_filter",
]
