"""``clip``: any open_clip ``VisionTransformer``; the paper's features.

The final patch tokens after ``ln_post`` **and** the projection (768-d for ViT-L/14 at 224 px, 16 x 16
tokens), CLS dropped, CLIP's own preprocessing (bicubic resize of the short side, center crop, CLIP
mean/std). open_clip's ``output_tokens=True`` returns the tokens after ``ln_post`` but *before*
``proj``; the official VQGAN-LC code projects them, so we do too.

The tower is built with random weights and filled from a local file, or from an open_clip pretrained tag
the user names (``pretrained="openai"``), fetched through open_clip's registry and huggingface_hub's cache
only then (``vqgan_lc.named_weights``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .._io import is_torchscript, load_state_dict_strict, load_weights_file
from ..data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessing
from ..errors import ExtractorError, MissingWeightsError
from .base import FeatureExtractor

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"  # OpenAI CLIP ViT-L/14, the paper's extractor

class ClipExtractor(FeatureExtractor):
    """An open_clip ``VisionTransformer``: final patch tokens after ``ln_post`` and ``@ proj``, CLS dropped.

    ``(B, 3, S, S)`` CLIP-normalised images -> ``(B, S/p, S/p, output_dim)`` (16 x 16 x 768 for ViT-L/14
    at 224 px), exactly what the official ``clip_feature_generation.py`` saves per image.
    """

    kind = "clip"

    def __init__(
        self,
        visual: nn.Module,
        *,
        model_name: str | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    ) -> None:
        visual = getattr(visual, "visual", visual)  # a whole CLIP model is fine too
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise ExtractorError(
                f"the clip extractor needs an open_clip VisionTransformer tower, got {type(visual).__name__} "
                "(timm- and ResNet-tower CLIP models have no patch-token output to match the paper)"
            )
        if visual.attn_pool is not None:
            raise ExtractorError("open_clip towers with attentional pooling (CoCa) have no per-patch tokens")
        size = tuple(int(s) for s in visual.image_size)
        super().__init__(Preprocessing(size, interpolation=interpolation, mean=mean, std=std))
        self.visual = visual.eval().requires_grad_(False)
        self.model_name = model_name or "open_clip-custom"

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        # forward_intermediates(indices=1, normalize_intermediates=True) = the last block's tokens after
        # ln_post with the CLS token split off; the projection is then applied per token as in the paper.
        tokens = v.forward_intermediates(
            images, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
        )["image_intermediates"][-1]
        if v.proj is not None:
            tokens = tokens @ v.proj
        b, _, h, w = images.shape
        gh, gw = h // v.patch_size[0], w // v.patch_size[1]
        return tokens.reshape(b, gh, gw, tokens.shape[-1]).float()

    def _describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "layer": "final (ln_post + proj, CLS dropped)"}


def load_clip(
    model: str = DEFAULT_CLIP_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    quick_gelu: bool | None = None,
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ClipExtractor:
    """Build an open_clip vision tower with random weights and fill it from a local ``weights`` file, or from
    open_clip's pretrained tag ``pretrained`` (``model="ViT-L-14", pretrained="openai"``: the paper's), fetched
    through open_clip's registry and huggingface_hub's cache (or ``cache_dir``) and only then.

    Args:
        model: an open_clip architecture name (``ViT-L-14-quickgelu`` = OpenAI's ViT-L/14, the paper's),
            a ``.json`` open_clip model config (``{"embed_dim", "vision_cfg", ...}``, optionally wrapped as
            ``{"model_cfg": ..., "preprocess_cfg": ...}``), a folder holding ``open_clip_config.json``, or an
            open_clip Hub model ``hf-hub:org/name`` (its ``open_clip_config.json`` and, without ``weights``, its
            weights, through huggingface_hub's cache).
        weights: a full CLIP or a vision-only state dict (``.safetensors``, ``.pt``/``.bin``), or the
            OpenAI TorchScript release ``ViT-L-14.pt``; or None with ``pretrained`` or an ``hf-hub:`` model.
        quick_gelu: force QuickGELU (OpenAI weights were trained with it); ``None`` = the config's value
            (the pretrained tag's, with ``pretrained``), or True for a TorchScript archive.
        pretrained: an open_clip pretrained tag of ``model`` (``open_clip.list_pretrained_tags_by_model``);
            ``weights`` naming such a tag instead of a file means the same. Offline, only the cache is read.
        cache_dir: open_clip's ``cache_dir`` (default: the Hugging Face cache).
    """
    import open_clip

    if pretrained is None and weights is not None and not Path(weights).exists() \
            and os.fspath(weights) in open_clip.list_pretrained_tags_by_model(model):
        pretrained, weights = os.fspath(weights), None  # --weights openai: a tag, not a file
    tag_cfg: dict[str, Any] = {}
    hub_name: str | None = None
    if model.startswith("hf-hub:"):  # open_clip's Hub models: config + weights in one repo
        from ..named_weights import open_clip_hub_model

        hub_name = model
        config_file, hub_weights = open_clip_hub_model(model.removeprefix("hf-hub:"), cache_dir=cache_dir,
                                                       with_weights=weights is None)
        model, weights = str(config_file), weights if weights is not None else hub_weights
        pretrained = None
    elif weights is None and pretrained is not None:
        from ..named_weights import open_clip_weights

        weights, tag_cfg = open_clip_weights(model, pretrained, cache_dir=cache_dir)
    if weights is None:
        raise MissingWeightsError(
            "the clip extractor needs pretrained CLIP weights: pass --pretrained TAG (an open_clip tag, as in "
            "--model ViT-L-14 --pretrained openai) or --weights PATH (a local open_clip or OpenAI CLIP checkpoint)"
        )
    cfg, pp, name = _open_clip_config(model)
    name = hub_name or name
    pp = {**{k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}, **pp}
    if quick_gelu is None and "quick_gelu" in tag_cfg:
        quick_gelu = bool(tag_cfg["quick_gelu"])
    weights = Path(weights)
    if not weights.is_file():
        raise MissingWeightsError(f"weights file {weights} does not exist; pass an existing local file with --weights")
    state = load_weights_file(weights)
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu", False)) or is_torchscript(weights)
    visual = _build_open_clip_visual(open_clip, cfg, quick_gelu)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    state = {k: v.float() for k, v in state.items()}
    load_state_dict_strict(visual, state, str(weights))
    ext = ClipExtractor(
        visual,
        model_name=name,
        mean=tuple(pp.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(pp.get("std", OPENAI_CLIP_STD)),
        interpolation=pp.get("interpolation", "bicubic"),
    )
    source = f"open_clip:{name}/{pretrained}" if pretrained is not None else hub_name
    ext.set_weights_info(weights, pretrained=source)
    log.info("clip extractor %s (quick_gelu=%s) from %s", name, quick_gelu, weights)
    return ext


def _open_clip_config(model: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    import open_clip

    p = Path(model)
    if p.is_dir() and (p / "open_clip_config.json").is_file():
        p = p / "open_clip_config.json"
    if p.suffix == ".json" and p.is_file():
        raw = json.loads(p.read_text())
        cfg = raw.get("model_cfg", raw)
        return dict(cfg), dict(raw.get("preprocess_cfg", {})), p.stem if p.name != "open_clip_config.json" else p.parent.name
    cfg = open_clip.get_model_config(model)
    if cfg is None or model.startswith(("hf-hub:", "local-dir:")):
        raise ExtractorError(
            f"unknown open_clip architecture {model!r}: pass a name from open_clip.list_models() "
            "(e.g. ViT-L-14-quickgelu) or a local .json model config with --model"
        )
    return dict(cfg), {}, model


def _build_open_clip_visual(open_clip: Any, cfg: dict[str, Any], quick_gelu: bool) -> nn.Module:
    vision_cfg = dict(cfg["vision_cfg"])
    if vision_cfg.get("timm_model_name"):
        raise ExtractorError("timm-tower open_clip models are not supported by the clip extractor")
    try:
        from open_clip.model import _build_vision_tower

        return _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
    except ImportError:  # pragma: no cover - older/newer open_clip without the helper
        clip = open_clip.model.CLIP(cfg["embed_dim"], vision_cfg, cfg["text_cfg"], quick_gelu=quick_gelu)
        return clip.visual



__all__ = ["DEFAULT_CLIP_MODEL", "ClipExtractor", "load_clip"]
