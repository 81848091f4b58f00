"""The extractor base class: preprocessed images ``(B, 3, H, W)`` -> ``(B, h, w, d)`` float32 features.

Every extractor is an ``nn.Module`` with

* ``preprocess`` -- a ``vqgan_lc.data.Preprocessing`` (picklable, run in the DataLoader workers);
* ``forward(images)`` -- ``(B, 3, H, W)`` preprocessed images -> ``(B, h, w, d)`` float32 features;
* ``describe()`` -- a JSON-serialisable description (extractor, model, weights file and its sha256,
  layer, image size, preprocessing) that the feature store and the codebook file record.

``ModuleExtractor`` wraps any ``nn.Module``; ``as_extractor`` and ``pool_features`` are the helpers the
codebook builder uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import sha256_file, state_dict_sha256
from ..data import HALF, Preprocessing
from ..errors import ExtractorError


class FeatureExtractor(nn.Module):
    """Base class: ``(B, 3, H, W)`` preprocessed images -> ``(B, h, w, d)`` float32 features, frozen."""

    kind: str = "module"

    def __init__(self, preprocess: Preprocessing) -> None:
        super().__init__()
        self.preprocess = preprocess
        self._weights_info: dict[str, Any] = {}

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.image_size

    def set_weights_info(self, path: str | os.PathLike | None, sha256: str | None = None, *,
                         pretrained: str | None = None) -> None:
        """Record the weights file (name and sha256) the extractor was loaded from, and the library name it was
        fetched by (``pretrained``, e.g. ``open_clip:ViT-L-14/openai``) when it was."""
        if path is None:
            self._weights_info = {}
        else:
            self._weights_info = {"weights": Path(path).name, "weights_sha256": sha256 or sha256_file(path)}
            if pretrained is not None:
                self._weights_info["pretrained"] = pretrained

    def _describe(self) -> dict[str, Any]:  # subclasses add model / layer
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance: extractor, model, weights file + sha256, layer, image size, preprocessing."""
        d: dict[str, Any] = {"extractor": self.kind, **self._describe()}
        if self._weights_info:
            d.update(self._weights_info)
        elif any(True for _ in self.parameters()):
            d["weights"] = None
            d["state_dict_sha256"] = state_dict_sha256(self)
        d["image_size"] = list(self.image_size)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    def train(self, mode: bool = True) -> FeatureExtractor:  # frozen: always eval
        return super().train(False)


def check_grid(feats: torch.Tensor, who: str) -> torch.Tensor:
    """``feats`` as float32 if it is a ``(B, h, w, d)`` grid; else ``ExtractorError`` naming ``who``."""
    if feats.dim() != 4:
        raise ExtractorError(f"{who} returned features of shape {tuple(feats.shape)}; expected (B, h, w, d)")
    return feats.float()


class ModuleExtractor(FeatureExtractor):
    """Wrap any ``nn.Module`` mapping ``(B, 3, H, W)`` images to ``(B, h, w, d)`` features.

    Images are resized (short side) and center-cropped to ``image_size`` and normalised with
    ``mean``/``std`` (default: [-1, 1]); pass ``preprocess`` to replace that entirely.
    """

    kind = "module"

    def __init__(
        self,
        module: nn.Module,
        *,
        image_size: int = 224,
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
        preprocess: Preprocessing | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(preprocess or Preprocessing(image_size, mean=mean, std=std))
        self.module = module.eval().requires_grad_(False)
        self.name = name or type(module).__name__

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return check_grid(self.module(images), f"module {self.name}")

    def _describe(self) -> dict[str, Any]:
        return {"model": self.name, "layer": None}


def as_extractor(obj: FeatureExtractor | nn.Module, **kwargs: Any) -> FeatureExtractor:
    """An extractor as is; any other ``nn.Module`` wrapped in ``ModuleExtractor(obj, **kwargs)``."""
    if isinstance(obj, FeatureExtractor):
        return obj
    if isinstance(obj, nn.Module):
        return ModuleExtractor(obj, **kwargs)
    raise ExtractorError(f"expected a FeatureExtractor or nn.Module, got {type(obj).__name__}")


def pool_features(features: torch.Tensor, pool: int) -> torch.Tensor:
    """``pool x pool`` average pooling of a ``(B, h, w, d)`` grid -> ``(B, h/pool, w/pool, d)``.

    The paper pools CLIP's 16 x 16 grid to 4 x 4 (``AvgPool2d(4)``) before clustering.
    """
    if pool == 1:
        return features
    b, h, w, d = features.shape
    if pool < 1 or h % pool or w % pool:
        raise ExtractorError(f"cannot pool a {h}x{w} feature grid by {pool}: the grid must be a multiple of --pool")
    x = features.permute(0, 3, 1, 2)
    return F.avg_pool2d(x, pool).permute(0, 2, 3, 1).contiguous()


__all__ = ["FeatureExtractor", "ModuleExtractor", "as_extractor", "check_grid", "pool_features"]
