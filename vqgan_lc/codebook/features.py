"""Frozen feature extractors: images -> ``(B, h, w, d)`` patch-feature grids.

Every extractor is an ``nn.Module`` with

* ``preprocess`` -- a picklable callable, PIL RGB image -> ``(3, H, W)`` float tensor (run in the
  DataLoader workers);
* ``forward(images)`` -- ``(B, 3, H, W)`` preprocessed images -> ``(B, h, w, d)`` float32 features;
* ``describe()`` -- a JSON-serialisable description (extractor, model, weights file and its sha256,
  layer, image size, preprocessing) that the feature store and the codebook file record.

Kinds:

``clip``   any open_clip ``VisionTransformer``; the paper's features: the final patch tokens after
           ``ln_post`` **and** the projection (768-d for ViT-L/14 at 224 px, 16 x 16 tokens), CLS dropped,
           CLIP's own preprocessing (bicubic resize of the short side, center crop, CLIP mean/std).
           open_clip's ``output_tokens=True`` returns the tokens after ``ln_post`` but *before* ``proj``;
           the official VQGAN-LC code projects them, so we do too.
``dinov2`` a DINOv2 ViT (timm ``vit_*_patch14[_reg4]_dinov2`` or a model from a local torch.hub
           directory); the output of one block (default ``-3``: DiGIT's 3rd-from-last block) with the final
           LayerNorm applied, CLS and register tokens dropped; 256 px images resized bicubically to 224.
``pixels`` raw RGB patches in [-1, 1] (16 x 16 x 3 = 768-d), weight-free.
``module`` any ``nn.Module`` mapping ``(B, 3, H, W)`` images to ``(B, h, w, d)`` features.

Nothing here downloads: pretrained parts are built with random weights and filled from a local file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .._io import sha256_file, state_dict_mismatch
from ..errors import CheckpointError, ExtractorError, MissingWeightsError

log = logging.getLogger(__name__)

ExtractorKind = Literal["clip", "dinov2", "pixels"]
EXTRACTOR_KINDS: tuple[str, ...] = ("clip", "dinov2", "pixels")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"  # OpenAI CLIP ViT-L/14, the paper's extractor
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


# ----------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocess:
    """PIL RGB image -> ``(3, H, W)`` float32 tensor, ``(x / 255 - mean) / std``.

    The short side is resized to ``resize`` (keeping the aspect ratio; the long side is truncated as
    torchvision does), then the center ``crop`` (H, W) is taken, as in CLIP's and timm's eval transforms.
    """

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        if (w <= h and w != self.resize) or (h < w and h != self.resize):
            if w <= h:
                size = (self.resize, int(self.resize * h / w))
            else:
                size = (int(self.resize * w / h), self.resize)
            resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
            img = img.resize(size, resample)
        w, h = img.size
        ch, cw = self.crop
        if ch > h or cw > w:
            raise ExtractorError(f"cannot center-crop {ch}x{cw} from a {h}x{w} image; set resize >= crop")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop"] = list(self.crop)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


# ----------------------------------------------------------------------------------------- weights files
file_sha256 = sha256_file  # the name the extractors, DiGIT and their tests use


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict (sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_weights_file(path: str | os.PathLike, option: str = "--weights") -> dict[str, torch.Tensor]:
    """Read a weights file without unrestricted pickle: ``.safetensors``, a ``torch.save`` state dict
    (``torch.load(weights_only=True)``) or a TorchScript archive (the OpenAI CLIP release).

    Wrappers ``{"state_dict"|"model"|"teacher": ...}`` and ``module.``/``backbone.`` prefixes are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist; pass an existing local file with {option}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif _is_torchscript(path):
            # The OpenAI CLIP release is a TorchScript archive; torch.jit.load runs no Python pickle.
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            obj = {k: v for k, v in obj.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many kinds for a bad file
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path} is not a readable weights file (.safetensors, a torch.save state dict or a TorchScript "
            f"archive); {type(e).__name__}: {msg}"
        ) from e
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    out = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    if not out:
        raise CheckpointError(f"{path} holds no tensors")
    return out


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not fit the chosen architecture ({problem}); check --model")
    module.load_state_dict(state)


# ----------------------------------------------------------------------------------------- base classes
class FeatureExtractor(nn.Module):
    """Base class: ``(B, 3, H, W)`` preprocessed images -> ``(B, h, w, d)`` float32 features, frozen."""

    kind: str = "module"

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess
        self._weights_info: dict[str, Any] = {}

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.crop

    def set_weights_info(self, path: str | os.PathLike | None, sha256: str | None = None) -> None:
        """Record the weights file (name and sha256) the extractor was loaded from."""
        if path is None:
            self._weights_info = {}
        else:
            self._weights_info = {"weights": Path(path).name, "weights_sha256": sha256 or file_sha256(path)}

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


def _check_grid(feats: torch.Tensor, who: str) -> torch.Tensor:
    if feats.dim() != 4:
        raise ExtractorError(f"{who} returned features of shape {tuple(feats.shape)}; expected (B, h, w, d)")
    return feats.float()


# ----------------------------------------------------------------------------------------- pixels
class PixelExtractor(FeatureExtractor):
    """Raw RGB patches: ``(B, 3, H, W)`` in [-1, 1] -> ``(B, H/p, W/p, p*p*3)``; each vector is the
    patch's pixels in (row, column, channel) order. Weight-free (the offline demo's extractor)."""

    kind = "pixels"

    def __init__(self, patch_size: int = 16, image_size: int = 256) -> None:
        if patch_size < 1 or image_size % patch_size:
            raise ExtractorError(f"image size {image_size} must be a multiple of the patch size {patch_size}")
        super().__init__(Preprocess(resize=image_size, crop=(image_size, image_size), mean=HALF, std=HALF))
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h // p, w // p, p * p * c).float()

    def _describe(self) -> dict[str, Any]:
        return {"model": f"rgb-patch{self.patch_size}", "layer": None, "patch_size": self.patch_size}


# ----------------------------------------------------------------------------------------- any module
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
        preprocess: Preprocess | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(preprocess or Preprocess(image_size, (image_size, image_size), tuple(mean), tuple(std)))
        self.module = module.eval().requires_grad_(False)
        self.name = name or type(module).__name__

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _check_grid(self.module(images), f"module {self.name}")

    def _describe(self) -> dict[str, Any]:
        return {"model": self.name, "layer": None}


# ----------------------------------------------------------------------------------------- CLIP
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
        super().__init__(Preprocess(resize=min(size), crop=size, mean=tuple(mean), std=tuple(std),  # type: ignore[arg-type]
                                    interpolation=interpolation))
        self.visual = visual.eval().requires_grad_(False)
        self.model_name = model_name or "open_clip-custom"

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)  # type: ignore[return-value]

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
) -> ClipExtractor:
    """Build an open_clip vision tower with random weights and fill it from a local ``weights`` file.

    Args:
        model: an open_clip architecture name (``ViT-L-14-quickgelu`` = OpenAI's ViT-L/14, the paper's),
            a ``.json`` open_clip model config (``{"embed_dim", "vision_cfg", ...}``, optionally wrapped as
            ``{"model_cfg": ..., "preprocess_cfg": ...}``), or a folder holding ``open_clip_config.json``.
        weights: a full CLIP or a vision-only state dict (``.safetensors``, ``.pt``/``.bin``), or the
            OpenAI TorchScript release ``ViT-L-14.pt``. Required; nothing is downloaded.
        quick_gelu: force QuickGELU (OpenAI weights were trained with it); ``None`` = the config's value,
            or True for a TorchScript archive.
    """
    if weights is None:
        raise MissingWeightsError(
            "the clip extractor needs pretrained CLIP weights: pass --weights PATH (a local open_clip or "
            "OpenAI CLIP checkpoint); nothing is downloaded"
        )
    import open_clip

    cfg, pp, name = _open_clip_config(model)
    weights = Path(weights)
    if not weights.is_file():
        raise MissingWeightsError(f"weights file {weights} does not exist; pass an existing local file with --weights")
    state = load_weights_file(weights)
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu", False)) or _is_torchscript(weights)
    visual = _build_open_clip_visual(open_clip, cfg, quick_gelu)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    state = {k: v.float() for k, v in state.items()}
    _load_strict(visual, state, str(weights))
    ext = ClipExtractor(
        visual,
        model_name=name,
        mean=tuple(pp.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(pp.get("std", OPENAI_CLIP_STD)),
        interpolation=pp.get("interpolation", "bicubic"),
    )
    ext.set_weights_info(weights)
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


# ----------------------------------------------------------------------------------------- DINOv2
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
        super().__init__(Preprocess(resize=load_size, crop=(load_size, load_size), mean=tuple(mean), std=tuple(std)))  # type: ignore[arg-type]
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
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if image_size % self.patch_size:
            raise ExtractorError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resize_to or images.shape[-2] != self.resize_to:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode="bicubic", align_corners=False)
        b = images.shape[0]
        g = self.resize_to // self.patch_size
        if self.hub_style:
            tokens = self.model.get_intermediate_layers(images, n=[self.block_index], reshape=False, norm=True)[0]
        else:
            tokens = self.model.forward_intermediates(
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
) -> DINOv2Extractor:
    """Build a DINOv2 ViT with random weights and fill it from a local ``weights`` file.

    Args:
        model: a timm architecture (``vit_base_patch14_reg4_dinov2``; the torch.hub names such as
            ``dinov2_vitb14_reg`` map to it), or with ``hub_dir`` the entry name in that folder's hubconf.py.
        weights: the official ``dinov2_vitb14_reg4_pretrain.pth`` or timm's safetensors. The official
            layout is converted to timm's, its position embedding resampled the way DINOv2 does at run
            time (bicubic, scale ``(g + 0.1) / M``, no antialias).
        hub_dir: a local clone of the DINOv2 repository (``torch.hub.load(dir, model, source="local")``).
        layer, load_size, image_size: see ``DINOv2Extractor``.
    """
    if weights is None:
        raise MissingWeightsError(
            "the dinov2 extractor needs pretrained DINOv2 weights: pass --weights PATH (a local "
            "dinov2_*_pretrain.pth or timm safetensors file); nothing is downloaded"
        )
    weights = Path(weights)
    state = load_weights_file(weights)
    if hub_dir is not None:
        if not Path(hub_dir).is_dir():
            raise ExtractorError(f"torch.hub directory {hub_dir} does not exist; check --hub-dir")
        net = torch.hub.load(str(hub_dir), model, source="local", pretrained=False)
        _load_strict(net, state, str(weights))
    else:
        import timm

        name = DINOV2_HUB_TO_TIMM.get(model, model)
        if name not in timm.list_models():
            raise ExtractorError(
                f"unknown DINOv2 architecture {model!r}: pass a timm name such as {DEFAULT_DINOV2_MODEL} "
                "or a torch.hub entry name with --hub-dir"
            )
        net = timm.create_model(name, pretrained=False, img_size=image_size, num_classes=0)
        _load_strict(net, convert_dinov2_state_dict(state, net), str(weights))
        model = name
    ext = DINOv2Extractor(net, layer=layer, load_size=load_size, image_size=image_size, model_name=model)
    ext.set_weights_info(weights)
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
    gh, gw = model.patch_embed.grid_size  # type: ignore[union-attr]
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
    return checkpoint_filter_fn(state, model)


# ----------------------------------------------------------------------------------------- factory
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
) -> FeatureExtractor:
    """Build an extractor by kind (``clip``, ``dinov2`` or ``pixels``) from local files only.

    ``image_size`` is the pixel extractor's crop (default 256) or DINOv2's load size (default 256,
    resized to 224 inside); CLIP uses its tower's own size. Pretrained kinds without ``weights`` raise
    ``MissingWeightsError`` naming ``--weights``.
    """
    if kind == "pixels":
        ext: FeatureExtractor = PixelExtractor(patch_size=patch_size, image_size=image_size or 256)
    elif kind == "clip":
        ext = load_clip(model or DEFAULT_CLIP_MODEL, weights, quick_gelu=quick_gelu)
    elif kind == "dinov2":
        ext = load_dinov2(
            model or DEFAULT_DINOV2_MODEL, weights, hub_dir=hub_dir,
            layer=DEFAULT_DINOV2_LAYER if layer is None else layer, load_size=image_size or 256,
        )
    else:
        raise ExtractorError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTOR_KINDS)}")
    return ext.to(device)


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
