"""``dinov2``: a DINOv2 ViT (timm ``vit_*_patch14[_reg4]_dinov2`` or a model from a local torch.hub
directory).

The output of one block (default ``-3``: DiGIT's 3rd-from-last block) with the final LayerNorm
applied, CLS and register tokens dropped; 256 px images resized bicubically to 224.

The network is built with random weights and filled from a local file, or from weights named the way timm
(``vit_base_patch14_reg4_dinov2.lvd142m``) or torch.hub (``dinov2_vitb14_reg``) name them, fetched only then.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import load_state_dict_strict, load_weights_file
from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ..errors import ExtractorError, MissingWeightsError
from .base import FeatureExtractor

log = logging.getLogger(__name__)

DEFAULT_DINOV2_MODEL = "vit_base_patch14_reg4_dinov2"  # DiGIT's base tokenizer
DEFAULT_DINOV2_LAYER = -3  # DiGIT: output of the 3rd-from-last block

# torch.hub entry names of DINOv2 -> the timm architecture with the same weights layout.
DINOV2_HUB_TO_TIMM: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}

class DINOv2Extractor(FeatureExtractor):
    """A DINOv2 ViT: output of block ``layer`` with the final LayerNorm, CLS and registers dropped.

    ``model`` is a timm ``VisionTransformer`` (``vit_*_patch14[_reg4]_dinov2``) or a model from the
    official DINOv2 torch.hub code (anything with ``get_intermediate_layers`` and ``blocks``).
    ``layer`` is a 0-based block index, negative counting from the end: ``-3`` (DiGIT) is block
    ``depth - 3`` (block 10 of 12 for ViT-B, 22 of 24 for ViT-L); ``-1`` is the last block.

    Images are loaded at ``load_size`` (resize short side + center crop, ImageNet mean/std) and resized
    bicubically to ``image_size`` inside ``forward``, as DiGIT does (256 -> 224): ``(B, 3, 256, 256)``
    -> ``(B, 16, 16, d)``.
    """

    kind = "dinov2"

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: int = DEFAULT_DINOV2_LAYER,
        load_size: int = 256,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        model_name: str | None = None,
    ) -> None:
        super().__init__(Preprocessing(load_size, mean=mean, std=std))
        self.model = model.eval().requires_grad_(False)
        self.resize_to = image_size
        self.hub_style = hasattr(model, "get_intermediate_layers") and not hasattr(model, "forward_intermediates")
        depth = int(getattr(model, "n_blocks", 0) or len(model.blocks))  # type: ignore[arg-type]
        if not -depth <= layer < depth:
            raise ExtractorError(f"layer {layer} is out of range for a {depth}-block model (use -{depth} .. {depth - 1})")
        self.depth = depth
        self.layer = layer
        self.block_index = layer % depth
        self.model_name = model_name or type(model).__name__
        patch = getattr(model, "patch_size", None) or model.patch_embed.patch_size  # type: ignore[union-attr]
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)  # type: ignore[arg-type]
        if image_size % self.patch_size:
            raise ExtractorError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resize_to or images.shape[-2] != self.resize_to:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode="bicubic", align_corners=False)
        b = images.shape[0]
        g = self.resize_to // self.patch_size
        if self.hub_style:
            tokens = self.model.get_intermediate_layers(images, n=[self.block_index], reshape=False, norm=True)[0]  # type: ignore[operator]
        else:
            tokens = self.model.forward_intermediates(  # type: ignore[operator]
                images, indices=[self.block_index], norm=True, stop_early=True,
                output_fmt="NLC", intermediates_only=True,
            )[0]
        return tokens.reshape(b, g, g, tokens.shape[-1]).float()

    def _describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "layer": self.layer,
            "block_index": self.block_index,
            "depth": self.depth,
            "norm": True,
            "resize_to": self.resize_to,
        }


def load_dinov2(
    model: str = DEFAULT_DINOV2_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    hub_dir: str | os.PathLike | None = None,
    layer: int = DEFAULT_DINOV2_LAYER,
    load_size: int = 256,
    image_size: int = 224,
    pretrained: bool | str = False,
    cache_dir: str | os.PathLike | None = None,
) -> DINOv2Extractor:
    """Build a DINOv2 ViT with random weights and fill it from a local ``weights`` file, or from the pretrained
    weights its library names, fetched only then (offline: the cache only; ``vqgan_lc.named_weights``):

    * a timm name with a tag, ``vit_base_patch14_reg4_dinov2.lvd142m`` (or ``pretrained=True`` for timm's
      default tag, ``pretrained="lvd142m"`` for a tag), through huggingface_hub's cache (``cache_dir``) as timm
      downloads it;
    * a torch.hub name, ``dinov2_vitb14_reg`` with ``pretrained=True``: the official
      ``dinov2_vitb14_reg4_pretrain.pth`` in (or fetched into) ``torch.hub.get_dir()/checkpoints``, the file
      ``torch.hub.load("facebookresearch/dinov2", ...)`` uses; no hub code is run.

    Args:
        model: a timm architecture (``vit_base_patch14_reg4_dinov2``; the torch.hub names such as
            ``dinov2_vitb14_reg`` map to it), or with ``hub_dir`` the entry name in that folder's hubconf.py.
        weights: the official ``dinov2_vitb14_reg4_pretrain.pth`` or timm's safetensors. The official
            layout is converted to timm's, its position embedding resampled the way DINOv2 does at run
            time (bicubic, scale ``(g + 0.1) / M``, no antialias).
        hub_dir: a local clone of the DINOv2 repository (``torch.hub.load(dir, model, source="local")``).
        layer, load_size, image_size: see ``DINOv2Extractor``.
    """
    source: str | None = None
    arch, _, tag = model.partition(".")
    if weights is None and hub_dir is None and (tag or pretrained):
        from ..named_weights import dinov2_weights

        weights, _, source = dinov2_weights(model, pretrained or True, cache_dir=cache_dir)
    model = arch if hub_dir is None else model
    if weights is None:
        raise MissingWeightsError(
            "the dinov2 extractor needs pretrained DINOv2 weights: name them (--model "
            "vit_base_patch14_reg4_dinov2.lvd142m, or --model dinov2_vitb14_reg --pretrained) or pass --weights PATH "
            "(a local dinov2_*_pretrain.pth or timm safetensors file)"
        )
    weights = Path(weights)
    state = load_weights_file(weights)
    if hub_dir is not None:
        if not Path(hub_dir).is_dir():
            raise ExtractorError(f"torch.hub directory {hub_dir} does not exist; check --hub-dir")
        net = torch.hub.load(str(hub_dir), model, source="local", pretrained=False)
        load_state_dict_strict(net, state, str(weights))
    else:
        import timm

        name = DINOV2_HUB_TO_TIMM.get(model, model)
        if name not in timm.list_models():
            raise ExtractorError(
                f"unknown DINOv2 architecture {model!r}: pass a timm name such as {DEFAULT_DINOV2_MODEL} "
                "or a torch.hub entry name with --hub-dir"
            )
        net = timm.create_model(name, pretrained=False, img_size=image_size, num_classes=0)
        load_state_dict_strict(net, convert_dinov2_state_dict(state, net), str(weights))
        model = name
    ext = DINOv2Extractor(net, layer=layer, load_size=load_size, image_size=image_size, model_name=model)
    ext.set_weights_info(weights, pretrained=source)
    log.info("dinov2 extractor %s, block %d of %d, from %s", model, ext.block_index, ext.depth, weights)
    return ext


def convert_dinov2_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official-DINOv2 (or timm) ViT weights -> this timm ``model``'s keys and position-embedding grid.

    The position embedding is resampled to the model's grid as DINOv2's ``interpolate_pos_encoding`` does
    at run time (bicubic with ``scale_factor = (g + 0.1) / M``, no antialias), so the 224 px features
    match the official model's; timm's own filter then renames the keys (registers, cls + pos).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = dict(state)
    pos = state.get("pos_embed")
    gh, gw = model.patch_embed.grid_size  # type: ignore[misc,union-attr]
    if pos is not None and gh == gw:
        n = pos.shape[1]
        n_prefix = n - int(math.isqrt(n)) ** 2  # 1 (official: cls position) or 0 (timm no_embed_class)
        m = int(math.isqrt(n - n_prefix))
        if m * m + n_prefix == n and m != gh:
            grid = pos[:, n_prefix:].reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
            s = (gh + 0.1) / m
            grid = F.interpolate(grid, scale_factor=(s, s), mode="bicubic", align_corners=False, antialias=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
            state["pos_embed"] = torch.cat([pos[:, :n_prefix].float(), grid], dim=1).to(pos.dtype)
    return checkpoint_filter_fn(state, model)  # type: ignore[arg-type]



__all__ = ["DEFAULT_DINOV2_LAYER", "DEFAULT_DINOV2_MODEL", "DINOV2_HUB_TO_TIMM", "DINOv2Extractor", "convert_dinov2_state_dict", "load_dinov2"]
