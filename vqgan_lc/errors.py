"""Exceptions a user can cause. Each message says what is wrong and what to do."""

from __future__ import annotations

from collections.abc import Iterable


class VQGANLCError(Exception):
    """Base class of every error raised on purpose by vqgan_lc."""


class ImageShapeError(VQGANLCError, ValueError):
    """An image batch of the wrong rank, channel count or spatial size."""


class TokenRangeError(VQGANLCError, ValueError):
    """Token ids outside ``[0, codebook_size)`` or of a non-integer dtype."""


class FormatVersionError(VQGANLCError, ValueError):
    """A file written by an unknown (usually newer) format version."""


class UnknownFormatError(VQGANLCError, ValueError):
    """A path that is none of the on-disk formats of ``vqgan_lc.formats``."""


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


class ConfigError(VQGANLCError, ValueError):
    """Settings that contradict each other or name something that does not exist (preset, option value)."""


class PreprocessingError(VQGANLCError, ValueError):
    """An image preprocessing that cannot be built or applied (unknown rule, a crop larger than the image)."""


class OutputPathError(VQGANLCError, OSError):
    """An output path that cannot be written: a file where a folder is wanted (or the reverse), a read-only
    or not writable folder. Raised before the work starts (``vqgan_lc.cli._checks.check_output``)."""


# ----------------------------------------------------------------------------------------- tokens, evaluation
class TokenFormatError(VQGANLCError, ValueError):
    """A token directory that is incomplete, corrupt, or made with other settings."""


class EncodeError(VQGANLCError, RuntimeError):
    """An image could not be encoded under ``on_error="fail"`` (finished shards are kept)."""


class EvaluateError(VQGANLCError, ValueError):
    """An evaluation that cannot run as asked (no images, mismatched image size, ...)."""


# ----------------------------------------------------------------------------------------- names, extras
class UnknownPresetError(VQGANLCError, KeyError):
    """A preset, model or extractor name that is not registered; the message lists the valid names.

    A ``KeyError`` subclass so ``except KeyError`` callers keep working; ``str()`` is the plain
    sentence (``KeyError`` would wrap it in quotes).
    """

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.valid)}")

    def __str__(self) -> str:
        return str(self.args[0])


class MissingDependencyError(VQGANLCError, ImportError):
    """An optional dependency that is not installed; the message names the pip extra that brings it."""

    def __init__(self, module: str, extra: str, purpose: str | None = None) -> None:
        self.module = module
        self.extra = extra
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"the optional dependency {module!r} is not installed{why}; "
                         f'install it with: pip install "vqgan-lc[{extra}]"', name=module)


# ----------------------------------------------------------------------------------------- pretrained / Hub
class PretrainedNotFoundError(VQGANLCError, FileNotFoundError):
    """A named pretrained file that is neither in the local cache nor reachable (offline, no network, not on the Hub)."""


class UnsupportedReleaseError(VQGANLCError, NotImplementedError):
    """A registered release whose kind this vqgan-lc cannot convert yet."""


class SampleEvaluationError(VQGANLCError, ValueError):
    """A sample folder, reference folder or statistics file that cannot be evaluated (FID / IS)."""


class ExportError(VQGANLCError, ValueError):
    """A token export that cannot be written or read as asked (bad target, non-empty output, missing package)."""


# ----------------------------------------------------------------------------------------- outputs, devices
class OutputExistsError(VQGANLCError, FileExistsError):
    """An output folder that holds files of another kind or of another run (pass ``--overwrite``), or a file."""


class OutputLockedError(VQGANLCError, RuntimeError):
    """An output folder another running vqgan-lc process is writing to (its advisory lock is held)."""


class DeviceError(ConfigError):
    """A torch device that does not exist or is unavailable on this machine (``map_location``, ``--device``)."""
