"""One front door for tokenizers: the ``Tokenizer`` protocol and ``load_tokenizer``.

Every image tokenizer of vqgan-lc (``VQGANLC``, the DiGIT ``DiscriminativeTokenizer``) offers

* ``kind``: ``"vqgan-lc"`` or ``"digit"`` (what token directories record);
* ``codebook_size``, ``downsample_factor`` (pixels per token at the default image size);
* ``latent_shape(height, width=None) -> (h, w)``: the token grid of a ``height x width`` image
  (``width`` defaults to ``height``; DiGIT's grid is fixed by its extractor, whatever the size);
* ``preprocessing``: how an image file becomes the ``(3, S, S)`` input of ``encode`` that
  ``vqgan-lc encode`` uses (the dict below); its ``image_size`` is the default image size;
* ``config_hash()``: the short hash of the architecture token directories record to refuse a mismatched tokenizer;
* ``weights_hash()``: the short hash of the weights that decide the ids (encoder, quant_conv, codebook; for
  DiGIT the extractor and the centroids), recorded beside it so another model of the same architecture
  is refused too;
* ``encode(images (B, 3, H, W) in [-1, 1]) -> ids (B, h, w) int64``: float16/bfloat16/float64 images are
  cast to the weights' dtype; NaN/Inf or values outside [-1, 1] (by more than 1e-2) are refused;
* ``save_pretrained(directory)``: a directory ``load_tokenizer`` opens again.

A ``DecodingTokenizer`` is a tokenizer whose ids map back to pixels: ``decode(ids (B, h, w)) -> (B, 3, H, W)``
in [-1, 1] (``VQGANLC``; DiGIT's ids are not decodable by themselves); ids may be any integer dtype,
the uint32 of token files included.

The preprocessing dict (``config.json``'s ``"preprocessing"`` block)::

    {"image_size": 256, "resize": "shorter-side", "interpolation": "bicubic", "crop": "center", "range": [-1, 1],
     "orientation": "exif", "alpha": "white"}

the file read by ``vqgan_lc.data.load_rgb`` (the EXIF orientation applied, 16/32-bit images scaled to 8
bits, an alpha channel composited on white: ``orientation`` and ``alpha`` record it; a block written
before those fields existed opens with them), the shorter side resized to ``image_size`` with bicubic
interpolation, a centred ``image_size`` square crop, pixel values mapped to ``range``. ``load_tokenizer(path)`` opens any tokenizer directory through
the format table of ``vqgan_lc.formats``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from .errors import CheckpointError, ImageShapeError, TokenRangeError

log = logging.getLogger(__name__)

TokenizerKind = Literal["vqgan-lc", "digit", "mage-vqgan"]

PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "resize": "shorter-side",
    "interpolation": "bicubic",
    "crop": "center",
    "range": [-1, 1],
    "orientation": "exif",
    "alpha": "white",
}
"""Every field of the preprocessing block except ``image_size``, at the values ``vqgan-lc encode`` uses."""

ENCODE_RANGE_TOLERANCE = 1e-2
"""How far outside [-1, 1] ``encode`` accepts pixel values (float rounding of a [-1, 1] pipeline)."""


def default_preprocessing(image_size: int, resize: str = "shorter-side") -> dict[str, Any]:
    """The preprocessing of ``vqgan-lc encode`` at ``image_size`` (a fresh dict); ``resize="official"``
    gives the official VQGAN-LC rule (OpenCV bilinear, ``vqgan_lc.data.resize_smallest_max_size``)."""
    block = {"image_size": int(image_size), **PREPROCESSING_DEFAULTS, "range": list(PREPROCESSING_DEFAULTS["range"])}
    if resize == "official":
        block.update(resize="official", interpolation="bilinear")
    return block


def check_preprocessing(block: Any) -> dict[str, Any]:
    """A validated copy of a preprocessing block; ``ValueError`` with one sentence when it is not one.

    Missing fields other than ``image_size`` take the defaults; unknown fields are refused.
    """
    if not isinstance(block, dict):
        raise ValueError(f"preprocessing must be a JSON object, got {type(block).__name__}")
    unknown = sorted(set(block) - {"image_size", *PREPROCESSING_DEFAULTS})
    if unknown:
        raise ValueError(f"unknown preprocessing fields {unknown}; is the file from a newer vqgan-lc?")
    size = block.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"preprocessing image_size must be a positive integer, got {size!r}")
    out = {**default_preprocessing(size, str(block.get("resize", "shorter-side"))), **block}
    for key in ("resize", "interpolation", "crop", "orientation", "alpha"):
        if not isinstance(out[key], str):
            raise ValueError(f"preprocessing {key} must be a string, got {out[key]!r}")
    for key in ("orientation", "alpha"):  # fixed reading rules (vqgan_lc.data.IMAGE_READING)
        if out[key] != PREPROCESSING_DEFAULTS[key]:
            raise ValueError(f"preprocessing {key} {out[key]!r} is not supported; vqgan-lc reads images with "
                             f"{key} {PREPROCESSING_DEFAULTS[key]!r}")
    rng = out["range"]
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)
            and rng[0] < rng[1]):
        raise ValueError(f"preprocessing range must be [low, high], got {rng!r}")
    out["range"] = list(rng)
    return out


@runtime_checkable
class Tokenizer(Protocol):
    """An image tokenizer: ``encode`` images in [-1, 1] to ``(B, h, w)`` int64 ids (see the module docstring)."""

    @property
    def kind(self) -> TokenizerKind: ...

    @property
    def codebook_size(self) -> int: ...

    @property
    def downsample_factor(self) -> int: ...

    @property
    def preprocessing(self) -> dict[str, Any]: ...

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int]: ...

    def config_hash(self) -> str: ...

    def weights_hash(self) -> str: ...

    def preprocess(self, images: Any) -> torch.Tensor: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def save_pretrained(self, directory: str | os.PathLike) -> Path: ...


@runtime_checkable
class DecodingTokenizer(Tokenizer, Protocol):
    """A tokenizer whose ids decode back to images."""

    def decode(self, ids: torch.Tensor) -> torch.Tensor: ...


class ImageTokenizerMixin:
    """``preprocess`` and ``latent_shape`` for a tokenizer that has ``preprocessing`` and
    ``downsample_factor`` (VQGAN-LC, MAGE, DiGIT; DiGIT overrides ``latent_shape``: its grid is fixed)."""

    @property
    def preprocessing(self) -> dict[str, Any]:  # pragma: no cover - every tokenizer defines it
        raise NotImplementedError

    @property
    def downsample_factor(self) -> int:  # pragma: no cover - every tokenizer defines it
        raise NotImplementedError

    def preprocess(self, images: Any) -> torch.Tensor:
        """PIL images or ``(H, W, 3)`` uint8 arrays -> the ``(B, 3, h, w)`` tensor ``vqgan-lc encode`` would feed
        ``encode`` (this tokenizer's ``preprocessing``: resize, centre crop, range)."""
        return preprocess_images(self.preprocessing, images)

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int]:
        """Token grid ``(h, w)`` of a ``height x width`` image (``width`` defaults to ``height``)."""
        f = self.downsample_factor
        return height // f, (height if width is None else width) // f

    def _weights_dtype(self) -> torch.dtype:
        """The dtype of the weights (the one ``encode`` casts images to); refuses weights on the meta device."""
        p = next(self.parameters(), None)  # type: ignore[attr-defined]
        if p is None:  # pragma: no cover - every tokenizer has weights
            return torch.float32
        if p.is_meta:
            raise CheckpointError("the tokenizer's weights are on the meta device (never loaded); load them with "
                                  "from_pretrained or load_state_dict(..., assign=True) first")
        return p.dtype

    def _check_images(self, x: torch.Tensor, channels: int) -> None:
        """A ``(B, channels, H, W)`` float tensor whose sides are multiples of ``downsample_factor``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ImageShapeError(f"images must be a (B, C, H, W) tensor in [-1, 1], got {shape}")
        if not x.is_floating_point():
            raise ImageShapeError(f"images must be floats in [-1, 1], got dtype {x.dtype}")
        c, h, w = x.shape[1:]
        if c != channels:
            raise ImageShapeError(f"images have {c} channels but the model expects {channels} (RGB); "
                                  "convert grayscale/RGBA images to RGB first")
        f = self.downsample_factor
        if h % f or w % f or h == 0 or w == 0:
            raise ImageShapeError(f"image size {h}x{w} is not a multiple of the downsampling factor {f}; "
                                  f"resize or crop to e.g. {max(f, h // f * f)}x{max(f, w // f * f)}")

    def _check_ids(self, ids: torch.Tensor) -> None:
        """A ``(B, h, w)`` integer tensor of ids in ``[0, codebook_size)``."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 3:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TokenRangeError(f"ids must be a (B, h, w) integer tensor, got {shape}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TokenRangeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(ids))
            size = self.codebook_size  # type: ignore[attr-defined]
            if lo < 0 or hi >= size:
                raise TokenRangeError(f"ids must lie in [0, {size}) for this codebook; got values in [{lo}, {hi}]. "
                                      "Were they made with another model?")

    def _encode_input(self, images: Any) -> Any:
        """``images`` checked for values and cast to the weights' dtype, for ``encode``: a float tensor with
        NaN/Inf or values outside [-1, 1] (beyond ``ENCODE_RANGE_TOLERANCE``) is refused with one sentence;
        float16/bfloat16/float64 images are cast. [0, 1] pixels lie inside [-1, 1] and cannot be told apart
        from a bright [-1, 1] batch: a batch with no negative value only logs a warning. Anything else goes
        on to the shape check unchanged."""
        if not isinstance(images, torch.Tensor):
            return images
        if images.is_meta:
            raise ImageShapeError("images are meta tensors (shapes without data); create them on a real device "
                                  "(e.g. cpu) before encode")
        dtype = self._weights_dtype()
        if not images.is_floating_point() or images.numel() == 0:
            return images
        lo_t, hi_t = torch.aminmax(images)  # one pass; NaN propagates into both, +-inf shows in one
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(images)).sum())
            raise ImageShapeError(f"images hold {bad} NaN or infinite values; check the pipeline that made them "
                                  "(encode takes finite pixels in [-1, 1])")
        tol = ENCODE_RANGE_TOLERANCE
        if lo < -1.0 - tol or hi > 1.0 + tol:
            hint = ("they look like [0, 255] pixels: pass x / 127.5 - 1" if hi > 2.0 else
                    "they look like [0, 1] pixels: pass x * 2 - 1" if lo >= -tol else "rescale them")
            raise ImageShapeError(f"images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]; {hint} "
                                  "(or prepare files with tok.preprocess)")
        if lo >= 0.0:  # inside [-1, 1] but with no dark pixel at all: most likely [0, 1] pixels
            log.warning("images passed to encode hold no value below 0 (range [%.4g, %.4g]); if they are [0, 1] "
                        "pixels, pass x * 2 - 1: encode expects [-1, 1]", lo, hi)
        return images if images.dtype == dtype else images.to(dtype)

    def _decode_input(self, ids: Any) -> Any:
        """``ids`` for ``decode``: the unsigned ids token files hold (uint32) become int64; meta tensors are
        refused with one sentence. The range check is the model's."""
        if not isinstance(ids, torch.Tensor):
            return ids
        if ids.is_meta:
            raise TokenRangeError("ids are a meta tensor (a shape without data); create them on a real device first")
        if ids.dtype in (torch.uint16, torch.uint32, torch.uint64):
            if ids.dtype == torch.uint64 and ids.numel() and bool((ids.view(torch.int64) < 0).any()):
                raise TokenRangeError("ids hold values of 2**63 or more, far outside any codebook; were they made "
                                      "with another model?")
            return ids.to(torch.int64)
        return ids


def preprocess_images(block: dict[str, Any], images: Any) -> torch.Tensor:
    """What ``vqgan-lc encode`` feeds a tokenizer whose preprocessing block is ``block``.

    ``images``: one PIL image, a ``(H, W, 3)`` uint8 array, or a list of either -> ``(B, 3, h, w)`` float32
    in the block's range (resize the shorter side, centre crop, scale), pixel for pixel as the dataset
    encoder prepares files; like timm's ``create_transform`` and open_clip's ``preprocess``.
    """
    import numpy as np
    from PIL import Image

    from .data import Preprocessing

    lo, hi = (float(v) for v in block["range"])
    scale = 1.0 / (hi - lo)  # x/255 in [0, 1] -> [lo, hi]: ((x/255) - mean) / std with std = 1/(hi-lo)
    prep = Preprocessing(block["image_size"], resize=block["resize"], interpolation=block["interpolation"],
                         crop=block["crop"], mean=(-lo * scale,) * 3, std=(scale,) * 3)
    items = images if isinstance(images, (list, tuple)) else [images]
    out = []
    for i, im in enumerate(items):
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ImageShapeError(f"image {i}: arrays must be (H, W, 3) uint8, got {im.shape} {im.dtype}; "
                                      "convert with PIL or pass a PIL image")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise ImageShapeError(f"image {i}: expected a PIL image or a uint8 array, got {type(im).__name__}")
        out.append(prep(im))  # Preprocessing.resize_image reads it as load_rgb does (vqgan_lc.data.to_rgb)
    return torch.stack(out)


def load_tokenizer(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Tokenizer:
    """Open a tokenizer directory (a VQGAN-LC model, a MAGE VQGAN or a DiGIT tokenizer), recognised by the
    format its ``config.json`` records, on ``map_location`` (default CPU).

    ``path`` may also be a Hub repo id or an official release name, resolved as ``VQGANLC.from_pretrained``
    does (huggingface_hub's cache; ``HF_HUB_OFFLINE=1`` uses the cache only).

    Raises ``CheckpointError`` for a directory of another kind (a GPT, a token directory, ...) or of no
    known format, ``FormatVersionError`` for an unknown format version.
    """
    from ._io import check_device
    from .errors import UnknownFormatError
    from .formats import detect
    from .pretrained import _resolve_pretrained

    check_device(map_location)
    path = _resolve_pretrained(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                               token=token)
    try:
        spec = detect(path)
    except UnknownFormatError as e:
        raise CheckpointError(f"{e} A tokenizer directory is written by save_pretrained, `vqgan-lc convert` or "
                              "`vqgan-lc encode --save-tokenizer`.") from e
    if spec.kind != "tokenizer":
        raise CheckpointError(f"{path} is a {spec.title}, not a tokenizer directory; pass a VQGAN-LC model, a "
                              "MAGE VQGAN or a DiGIT tokenizer directory.")
    tok = spec.open(path.parent if path.is_file() else path)
    if not isinstance(tok, Tokenizer):  # pragma: no cover - the table only lists tokenizer classes here
        raise CheckpointError(f"{path} did not open as a tokenizer")
    return tok.to(map_location or "cpu").eval()  # type: ignore[attr-defined]


def tokenizer_identity(tok: Tokenizer) -> dict[str, Any]:
    """What a token directory records about the tokenizer that made it: kind, architecture hash, weights hash
    (``weights_hash``), codebook size and downsampling factor."""
    return {
        "kind": tok.kind,
        "config_hash": tok.config_hash(),
        "weights_hash": tok.weights_hash(),
        "codebook_size": tok.codebook_size,
        "downsample_factor": tok.downsample_factor,
    }


def identity_mismatch(recorded: dict[str, Any], tok: Tokenizer) -> list[str]:
    """Why ``tok`` is not the tokenizer a token directory (or a GPT's provenance) records in ``recorded``
    (a ``tokenizer_identity`` dict): the differing architecture and weights hashes (empty when it fits).

    A record made before vqgan-lc recorded the weights (no ``weights_hash``) is accepted on the architecture
    alone, with a warning: re-encode to get the full check.
    """
    problems = []
    if recorded.get("config_hash") != tok.config_hash():
        problems.append(f"model config hash {tok.config_hash()} != {recorded.get('config_hash')} recorded")
    if "weights_hash" not in recorded:
        log.warning(
            "the tokens were made before vqgan-lc recorded the weights hash: only the architecture is checked; "
            "re-encode them to check the weights too")
    elif recorded["weights_hash"] != tok.weights_hash():
        problems.append(f"weights hash {tok.weights_hash()} != {recorded['weights_hash']} recorded (same architecture, "
                        "other weights)")
    return problems


__all__ = [
    "ENCODE_RANGE_TOLERANCE",
    "PREPROCESSING_DEFAULTS",
    "DecodingTokenizer",
    "ImageTokenizerMixin",
    "Tokenizer",
    "TokenizerKind",
    "check_preprocessing",
    "default_preprocessing",
    "identity_mismatch",
    "load_tokenizer",
    "preprocess_images",
    "tokenizer_identity",
]
