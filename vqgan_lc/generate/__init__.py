"""Generation: the autoregressive GPT prior over token files, sampling and the sampling pipelines.

The DiGIT discriminative tokenizer is a tokenizer and lives beside the model (``vqgan_lc.digit``).
Inference (``GPT``, ``generate``, the pipelines) needs no Lightning;
the training pieces (``fit_gpt``, ``GPTLightningModule``, ...) import it on first use.
"""

from __future__ import annotations

from typing import Any

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

_TRAINING = {"GPTLightningModule", "GPTTokenData", "GPTTokenDataset", "GPTTrainConfig", "fit_gpt",
             "model_config_from_data", "check_paired"}


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from . import module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GPT",
    "GPTConfig",
    "GPTLightningModule",
    "GPTTokenData",
    "GPTTokenDataset",
    "GPTTrainConfig",
    "GPT_PRESETS",
    "KVCache",
    "ProbeResult",
    "SampleOutput",
    "SamplingConfig",
    "apply_cfg",
    "check_paired",
    "filter_logits",
    "fit_gpt",
    "generate",
    "gpt_config",
    "linear_probe",
    "list_gpt_presets",
    "model_config_from_data",
    "probe_features",
    "resolve_top_k",
    "sample_images",
    "sample_next",
    "sample_two_stage",
    "save_images",
    "top_k_filter",
    "top_p_filter",
]
