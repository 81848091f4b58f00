"""vqgan-lc: large-codebook image tokenizers (VQGAN-LC, DiGIT-style discriminative tokens).

Quick start::

    from vqgan_lc import VQGANLC
    tok = VQGANLC.from_pretrained("path/to/model_dir")
    ids = tok.encode(images)        # (B, 3, H, W) in [-1, 1] -> (B, H/16, W/16) int64
    recon = tok.decode(ids)         # -> (B, 3, H, W)

The public names below are imported on first use (PEP 562), so ``import vqgan_lc`` and
``vqgan-lc --help`` do not pay for ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the submodule (relative to this package) that defines it
_LAZY: dict[str, str] = {
    "ModelConfig": ".config",
    "QuantizerConfig": ".config",
    "VQGANLC": ".model",
    "ModelOutput": ".model",
    "CodebookUsage": ".quantize",
    "QuantizerOutput": ".quantize",
    "nearest_code": ".quantize",
    "create_model": ".registry",
    "Tokenizer": ".tokenizer",
    "DecodingTokenizer": ".tokenizer",
    "load_tokenizer": ".tokenizer",
    "MAGEVQGAN": ".mage",
    "get_config": ".registry",
    "list_models": ".registry",
    **{name: ".errors" for name in (
        "CheckpointError", "CodebookError", "ConfigError", "EncodeError", "EvaluateError", "ExtractorError", "FeatureStoreError",
        "FormatVersionError", "ImageShapeError", "ImageSourceError", "InsufficientMemoryError",
        "MissingDependencyError", "MissingWeightsError", "PreprocessingError", "TokenFormatError", "TokenRangeError", "UnknownFormatError",
        "UnknownPresetError", "VQGANLCError",
    )},
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these come from __getattr__
    from .config import ModelConfig, QuantizerConfig
    from .errors import (
        CheckpointError,
        CodebookError,
        ConfigError,
        EncodeError,
        EvaluateError,
        ExtractorError,
        FeatureStoreError,
        FormatVersionError,
        ImageShapeError,
        ImageSourceError,
        InsufficientMemoryError,
        MissingDependencyError,
        MissingWeightsError,
        PreprocessingError,
        TokenFormatError,
        TokenRangeError,
        UnknownFormatError,
        UnknownPresetError,
        VQGANLCError,
    )
    from .mage import MAGEVQGAN
    from .model import VQGANLC, ModelOutput
    from .quantize import CodebookUsage, QuantizerOutput, nearest_code
    from .registry import create_model, get_config, list_models
    from .tokenizer import DecodingTokenizer, Tokenizer, load_tokenizer

# a literal list, so type checkers and linters read it; tests check it equals _LAZY's keys + __version__
__all__ = [
    "CheckpointError",
    "CodebookError",
    "CodebookUsage",
    "ConfigError",
    "DecodingTokenizer",
    "EncodeError",
    "EvaluateError",
    "ExtractorError",
    "FeatureStoreError",
    "FormatVersionError",
    "ImageShapeError",
    "ImageSourceError",
    "InsufficientMemoryError",
    "MAGEVQGAN",
    "MissingDependencyError",
    "MissingWeightsError",
    "ModelConfig",
    "ModelOutput",
    "PreprocessingError",
    "QuantizerConfig",
    "QuantizerOutput",
    "TokenFormatError",
    "TokenRangeError",
    "Tokenizer",
    "UnknownFormatError",
    "UnknownPresetError",
    "VQGANLC",
    "VQGANLCError",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "load_tokenizer",
    "nearest_code",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
