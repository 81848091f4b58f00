"""Token directories: write (``encode_dataset``), read (``open_tokens``, ``TokenDataset``)."""

from .encode import (
    EncodeError,
    EncodeOptions,
    check_compatible,
    encode_dataset,
    load_tokenizer,
    tokenizer_identity,
)
from .format import TokenDataset, TokenFile, TokenFormatError, open_tokens, read_manifest

__all__ = [
    "EncodeError",
    "EncodeOptions",
    "TokenDataset",
    "TokenFile",
    "TokenFormatError",
    "check_compatible",
    "encode_dataset",
    "load_tokenizer",
    "open_tokens",
    "read_manifest",
    "tokenizer_identity",
]
