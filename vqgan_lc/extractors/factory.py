"""``create_extractor``: build a feature extractor by kind (``clip``, ``dinov2``, ``pixels``) from local files."""

from __future__ import annotations

import os
from typing import Literal

import torch

from ..errors import ExtractorError
from .base import FeatureExtractor
from .clip import DEFAULT_CLIP_MODEL, load_clip
from .dinov2 import DEFAULT_DINOV2_LAYER, DEFAULT_DINOV2_MODEL, load_dinov2
from .pixels import PixelExtractor

ExtractorKind = Literal["clip", "dinov2", "pixels"]
EXTRACTOR_KINDS: tuple[str, ...] = ("clip", "dinov2", "pixels")

def create_extractor(
    kind: ExtractorKind,
    *,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    hub_dir: str | os.PathLike | None = None,
    layer: int | None = None,
    image_size: int | None = None,
    patch_size: int = 16,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    pretrained: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """Build an extractor by kind (``clip``, ``dinov2`` or ``pixels``) from local files only.

    ``image_size`` is the pixel extractor's crop (default 256) or DINOv2's load size (default 256,
    resized to 224 inside); CLIP uses its tower's own size. ``pretrained`` names the weights the way the
    library does (CLIP: an open_clip tag such as ``"openai"``; DINOv2: ``True`` or a timm tag, or a tagged
    timm name / a torch.hub name as ``model``): fetched through that library's cache only then, offline honoured.
    Pretrained kinds with neither raise ``MissingWeightsError`` naming the options.
    """
    if kind == "pixels":
        ext: FeatureExtractor = PixelExtractor(patch_size=patch_size, image_size=image_size or 256)
    elif kind == "clip":
        if pretrained is True:
            raise ExtractorError("the clip extractor needs an open_clip tag: pass one, as in --pretrained openai")
        ext = load_clip(model or DEFAULT_CLIP_MODEL, weights, quick_gelu=quick_gelu,
                        pretrained=pretrained or None, cache_dir=cache_dir)
    elif kind == "dinov2":
        ext = load_dinov2(
            model or DEFAULT_DINOV2_MODEL, weights, hub_dir=hub_dir,
            layer=DEFAULT_DINOV2_LAYER if layer is None else layer, load_size=image_size or 256,
            pretrained=pretrained or False, cache_dir=cache_dir,
        )
    else:
        raise ExtractorError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTOR_KINDS)}")
    return ext.to(device)


__all__ = ["EXTRACTOR_KINDS", "ExtractorKind", "create_extractor"]
