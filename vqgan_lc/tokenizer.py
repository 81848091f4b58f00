"""One front door for tokenizers: the ``Tokenizer`` protocol and ``load_tokenizer``.

Every image tokenizer of vqgan-lc (``VQGANLC``, the DiGIT ``DiscriminativeTokenizer``) offers

* ``kind``: ``"vqgan-lc"`` or ``"digit"`` (what token directories record);
* ``codebook_size``, ``downsample_factor`` (pixels per token at the default image size);
* ``latent_shape(height, width=None) -> (h, w)``: the token grid of a ``height x width`` image
  (``width`` defaults to ``height``; DiGIT's grid is fixed by its extractor, whatever the size);
* ``preprocessing``: how an image file becomes the ``(3, S, S)`` input of ``encode`` that
  ``vqgan-lc encode`` uses (the dict below); its ``image_size`` is the default image size;
* ``config_hash()``: the short hash token directories record to refuse a mismatched tokenizer;
* ``encode(images (B, 3, H, W) in [-1, 1]) -> ids (B, h, w) int64``;
* ``save_pretrained(directory)``: a directory ``load_tokenizer`` opens again.

A ``DecodingTokenizer`` is a tokenizer whose ids map back to pixels: ``decode(ids (B, h, w)) -> (B, 3, H, W)``
in [-1, 1] (``VQGANLC``; DiGIT's ids are not decodable by themselves).

The preprocessing dict (``config.json``'s ``"preprocessing"`` block)::

    {"image_size": 256, "resize": "shorter-side", "interpolation": "bicubic", "crop": "center", "range": [-1, 1]}

the shorter side resized to ``image_size`` with bicubic interpolation, a centred ``image_size`` square
crop, pixel values mapped to ``range``. ``load_tokenizer(path)`` opens any tokenizer directory through
the format table of ``vqgan_lc.formats``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from .errors import CheckpointError, ImageShapeError

TokenizerKind = Literal["vqgan-lc", "digit", "mage-vqgan"]

PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "resize": "shorter-side",
    "interpolation": "bicubic",
    "crop": "center",
    "range": [-1, 1],
}
"""Every field of the preprocessing block except ``image_size``, at the values ``vqgan-lc encode`` uses."""


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
    for key in ("resize", "interpolation", "crop"):
        if not isinstance(out[key], str):
            raise ValueError(f"preprocessing {key} must be a string, got {out[key]!r}")
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
        out.append(prep(im.convert("RGB") if im.mode != "RGB" else im))
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
    from .errors import UnknownFormatError
    from .formats import detect
    from .pretrained import _resolve_pretrained

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
    """What a token directory records about the tokenizer that made it."""
    return {
        "kind": tok.kind,
        "config_hash": tok.config_hash(),
        "codebook_size": tok.codebook_size,
        "downsample_factor": tok.downsample_factor,
    }


__all__ = [
    "PREPROCESSING_DEFAULTS",
    "DecodingTokenizer",
    "ImageTokenizerMixin",
    "Tokenizer",
    "TokenizerKind",
    "check_preprocessing",
    "default_preprocessing",
    "load_tokenizer",
    "preprocess_images",
    "tokenizer_identity",
]
