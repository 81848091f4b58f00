"""Token directories: write (``encode_dataset``), read (``open_tokens``, ``TokenDataset``)."""

from .encode import EncodeError, EncodeOptions, encode_dataset
from .format import TokenDataset, TokenFile, TokenFormatError, check_compatible, open_tokens, read_manifest

__all__ = [
    "EncodeError",
    "EncodeOptions",
    "TokenDataset",
    "TokenFile",
    "TokenFormatError",
    "check_compatible",
    "encode_dataset",
    "open_tokens",
    "read_manifest",
]
