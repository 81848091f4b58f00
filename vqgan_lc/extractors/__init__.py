"""Frozen feature extractors: images -> ``(B, h, w, d)`` patch-feature grids.

Used by the codebook builder (features to cluster), the DiGIT tokenizer (DINOv2 features to assign)
and anything else that needs frozen features; they depend only on ``vqgan_lc.data`` (preprocessing)
and ``vqgan_lc._io`` (weights files), never on the codebook builder.

Kinds:

``clip``   any open_clip ``VisionTransformer`` (``clip.py``): the paper's features.
``dinov2`` a DINOv2 ViT (``dinov2.py``): DiGIT's features, one block's output with the final LayerNorm.
``pixels`` raw RGB patches in [-1, 1] (``pixels.py``), weight-free.
``module`` any ``nn.Module`` mapping ``(B, 3, H, W)`` images to ``(B, h, w, d)`` features (``base.py``).

``create_extractor`` (``factory.py``) builds one by kind. Nothing here downloads: pretrained parts
are built with random weights and filled from a local file.
"""

from ..errors import ExtractorError
from .base import FeatureExtractor, ModuleExtractor, as_extractor, check_grid, pool_features
from .clip import DEFAULT_CLIP_MODEL, ClipExtractor, load_clip
from .dinov2 import (
    DEFAULT_DINOV2_LAYER,
    DEFAULT_DINOV2_MODEL,
    DINOV2_HUB_TO_TIMM,
    DINOv2Extractor,
    convert_dinov2_state_dict,
    load_dinov2,
)
from .factory import EXTRACTOR_KINDS, ExtractorKind, create_extractor
from .pixels import PixelExtractor

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINOV2_LAYER",
    "DEFAULT_DINOV2_MODEL",
    "DINOV2_HUB_TO_TIMM",
    "EXTRACTOR_KINDS",
    "ClipExtractor",
    "DINOv2Extractor",
    "ExtractorError",
    "ExtractorKind",
    "FeatureExtractor",
    "ModuleExtractor",
    "PixelExtractor",
    "as_extractor",
    "check_grid",
    "convert_dinov2_state_dict",
    "create_extractor",
    "load_clip",
    "load_dinov2",
    "pool_features",
]
