"""vqgan-lc: large-codebook image tokenizers (VQGAN-LC, DiGIT-style discriminative tokens).

Quick start::

    from vqgan_lc import VQGANLC
    tok = VQGANLC.from_pretrained("path/to/model_dir")
    ids = tok.encode(images)        # (B, 3, H, W) in [-1, 1] -> (B, H/16, W/16) int64
    recon = tok.decode(ids)         # -> (B, 3, H, W)
"""

from ._version import __version__
from .config import ModelConfig, QuantizerConfig
from .errors import (
    CheckpointError,
    CodebookError,
    FormatVersionError,
    ImageShapeError,
    ImageSourceError,
    MissingWeightsError,
    TokenRangeError,
    UnknownFormatError,
    VQGANLCError,
)
from .model import VQGANLC, ModelOutput
from .quantize import CodebookUsage, QuantizerOutput, nearest_code
from .registry import create_model, get_config, list_models
from .tokenizer import DecodingTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "__version__",
    "CheckpointError",
    "CodebookError",
    "CodebookUsage",
    "DecodingTokenizer",
    "FormatVersionError",
    "ImageShapeError",
    "ImageSourceError",
    "MissingWeightsError",
    "ModelConfig",
    "ModelOutput",
    "QuantizerConfig",
    "QuantizerOutput",
    "TokenRangeError",
    "Tokenizer",
    "UnknownFormatError",
    "VQGANLC",
    "VQGANLCError",
    "create_model",
    "get_config",
    "list_models",
    "load_tokenizer",
    "nearest_code",
]
