"""Exceptions a user can cause. Each message says what is wrong and what to do."""

from __future__ import annotations


class VQGANLCError(Exception):
    """Base class of every error raised on purpose by vqgan_lc."""


class ImageShapeError(VQGANLCError, ValueError):
    """An image batch of the wrong rank, channel count or spatial size."""


class TokenRangeError(VQGANLCError, ValueError):
    """Token ids outside ``[0, codebook_size)`` or of a non-integer dtype."""


class FormatVersionError(VQGANLCError, ValueError):
    """A file written by an unknown (usually newer) format version."""


class CheckpointError(VQGANLCError, ValueError):
    """A weights file that is corrupt, of another shape, or not of the expected kind."""


class CodebookError(VQGANLCError, ValueError):
    """A codebook file that is missing, corrupt, or does not fit the model."""


class MissingWeightsError(VQGANLCError, FileNotFoundError):
    """A pretrained component was asked for without a local weights file."""


# ----------------------------------------------------------------------------------------- codebook builder
class ExtractorError(VQGANLCError, ValueError):
    """An extractor that cannot be built or used as asked (unknown model, bad layer, wrong output shape)."""


class FeatureStoreError(VQGANLCError, ValueError):
    """A feature store that is missing, incomplete, corrupt, or was made with other options."""


class InsufficientMemoryError(VQGANLCError, MemoryError):
    """A k-means job estimated not to fit in the available memory."""


class ImageSourceError(VQGANLCError, ValueError):
    """An image folder or file list that cannot be used (missing, empty, malformed)."""


class ExportError(VQGANLCError, ValueError):
    """A token export that cannot be written or read as asked (bad target, non-empty output, missing package)."""
