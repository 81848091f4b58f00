"""Token directories: write (``encode_dataset``), read (``open_tokens``, ``TokenDataset``, ``open_latents``)."""

from .encode import EncodeError, EncodeOptions, encode_dataset
from .format import TokenDataset, TokenFile, TokenFormatError, check_compatible, open_tokens, read_manifest
from .latents import LatentFile, open_latents

__all__ = [
    "EncodeError",
    "EncodeOptions",
    "LatentFile",
    "TokenDataset",
    "TokenFile",
    "TokenFormatError",
    "check_compatible",
    "encode_dataset",
    "open_latents",
    "open_tokens",
    "read_manifest",
]
