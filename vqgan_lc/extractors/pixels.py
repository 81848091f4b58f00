"""``pixels``: raw RGB patches in [-1, 1] (16 x 16 x 3 = 768-d), weight-free (the offline demo's extractor)."""

from __future__ import annotations

from typing import Any

import torch

from ..data import Preprocessing
from ..errors import ExtractorError
from .base import FeatureExtractor


class PixelExtractor(FeatureExtractor):
    """Raw RGB patches: ``(B, 3, H, W)`` in [-1, 1] -> ``(B, H/p, W/p, p*p*3)``; each vector is the
    patch's pixels in (row, column, channel) order. Weight-free (the offline demo's extractor)."""

    kind = "pixels"

    def __init__(self, patch_size: int = 16, image_size: int = 256) -> None:
        if patch_size < 1 or image_size % patch_size:
            raise ExtractorError(f"image size {image_size} must be a multiple of the patch size {patch_size}")
        super().__init__(Preprocessing(image_size))
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h // p, w // p, p * p * c).float()

    def _describe(self) -> dict[str, Any]:
        return {"model": f"rgb-patch{self.patch_size}", "layer": None, "patch_size": self.patch_size}


__all__ = ["PixelExtractor"]
