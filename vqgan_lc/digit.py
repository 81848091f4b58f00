"""DiGIT's discriminative tokenizer: frozen DINOv2 features -> nearest k-means centroid.

DiGIT (Zhu et al., NeurIPS 2024) tokenizes an image with a frozen DINOv2 ViT-B/14 with 4 registers:
the 256 px image (ImageNet mean/std) is resized bicubically to 224, the output of the 3rd-from-last
block (block 10 of 12) goes through the final LayerNorm, the CLS and register tokens are dropped, and
each of the 16 x 16 patch features is assigned to the nearest of K = 8192 centroids (faiss k-means,
20 iterations; built here with ``vqgan-lc build-codebook --extractor dinov2 --k 8192``) by squared
Euclidean distance. The ids are not decodable by themselves; a second-stage GPT maps them to a
pixel tokenizer's ids (``vqgan_lc.generate.pipeline``).

``DiscriminativeTokenizer`` is a ``vqgan_lc.tokenizer.Tokenizer`` (not a ``DecodingTokenizer``), so
``vqgan-lc encode --tokenizer digit`` writes the usual token directory and ``load_tokenizer`` opens
its directory.

Directory (``format: vqgan-lc-digit``, version 1)::

    config.json            format, format_version, extractor spec (timm model name or torch.hub entry,
                           model overrides, layer, load/input size, weights file path + sha256,
                           state-dict sha256), codebook size/dim/sha256, grid, config hash,
                           preprocessing (the 256 px centre crop fed to ``encode``; the 224 px resize and
                           ImageNet normalisation happen inside), provenance (directories written before
                           the last two existed get the defaults)
    codebook.safetensors   the (K, d) centroids (the codebook file format, with its provenance)
    extractor.safetensors  the extractor's weights, only when they were embedded (no source file given)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ._io import (
    CONFIG_NAME,
    atomic_save_safetensors,
    atomic_write_json,
    load_weights_file,
    read_format_json,
    sha256_file,
    state_dict_sha256,
)
from ._io import load_state_dict_strict as _load_strict
from .codebook.io import Codebook, load_codebook, save_codebook
from .data import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError, CodebookError, ExtractorError, ImageShapeError, MissingWeightsError
from .extractors.dinov2 import (
    DEFAULT_DINOV2_LAYER,
    DEFAULT_DINOV2_MODEL,
    DINOV2_HUB_TO_TIMM,
    DINOv2Extractor,
    convert_dinov2_state_dict,
)
from .formats import Description, millions, numel, safetensors_header
from .named_weights import dinov2_weights
from .pretrained import PretrainedMixin, check_save_directory
from .quantize.search import nearest_code
from .tokenizer import ImageTokenizerMixin, check_preprocessing, default_preprocessing

log = logging.getLogger(__name__)

DIGIT_FORMAT = "vqgan-lc-digit"
DIGIT_FORMAT_VERSION = 1
CODEBOOK_NAME = "codebook.safetensors"
EXTRACTOR_WEIGHTS_NAME = "extractor.safetensors"
DEFAULT_DIGIT_K = 8192  # DiGIT base (km_8k); 16384 for ViT-L


@dataclass(frozen=True)
class ExtractorSpec:
    """How to rebuild the frozen DINOv2 extractor.

    Args:
        model: timm architecture (``vit_base_patch14_reg4_dinov2``, DiGIT base) or, with ``hub_dir``,
            a torch.hub entry of a local DINOv2 clone. torch.hub names map to timm ones.
        model_kwargs: overrides passed to ``timm.create_model`` (tests build tiny DINOv2-shaped ViTs).
        hub_dir: local DINOv2 repository for ``torch.hub.load(..., source="local")``.
        layer: block index, negative from the end (-3: DiGIT's 3rd-from-last block).
        load_size: the image size the encode pipeline feeds (256).
        image_size: the extractor's input size (224; resized bicubically inside).
        weights: path of the weights file (``None`` when embedded in the tokenizer directory).
        weights_sha256: that file's sha256, checked when loading.
    """

    model: str = DEFAULT_DINOV2_MODEL
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    hub_dir: str | None = None
    layer: int = DEFAULT_DINOV2_LAYER
    load_size: int = 256
    image_size: int = 224
    weights: str | None = None
    weights_sha256: str | None = None


def build_dinov2(spec: ExtractorSpec, state: dict[str, torch.Tensor] | None = None) -> DINOv2Extractor:
    """A ``DINOv2Extractor`` for ``spec`` with weights ``state`` (``None``: read ``spec.weights``).

    Official DINOv2 and timm weight layouts are both accepted (converted as ``load_dinov2`` does).
    Nothing is downloaded.
    """
    source = "embedded weights"
    if state is None:
        if spec.weights is None:
            raise MissingWeightsError("the DiGIT tokenizer needs DINOv2 weights: pass a local weights file "
                                      "(--weights); nothing is downloaded")
        state = load_weights_file(spec.weights)
        source = spec.weights
    if spec.hub_dir is not None:
        if not Path(spec.hub_dir).is_dir():
            raise ExtractorError(f"torch.hub directory {spec.hub_dir} does not exist; check --hub-dir")
        net = torch.hub.load(spec.hub_dir, spec.model, source="local", pretrained=False, **spec.model_kwargs)
        _load_strict(net, state, source)
    else:
        import timm

        name = DINOV2_HUB_TO_TIMM.get(spec.model, spec.model)
        if name not in timm.list_models():
            raise ExtractorError(f"unknown DINOv2 architecture {spec.model!r}: pass a timm name such as "
                                 f"{DEFAULT_DINOV2_MODEL} or a torch.hub entry with --hub-dir")
        net = timm.create_model(name, pretrained=False, img_size=spec.image_size, num_classes=0, **spec.model_kwargs)
        _load_strict(net, convert_dinov2_state_dict(state, net), source)
    return DINOv2Extractor(net, layer=spec.layer, load_size=spec.load_size, image_size=spec.image_size,
                           model_name=spec.model)


class DiscriminativeTokenizer(ImageTokenizerMixin, PretrainedMixin, nn.Module):
    """DiGIT tokenizer: ``(B, 3, H, W)`` images in [-1, 1] -> ``(B, 16, 16)`` int64 ids in ``[0, K)``.

    Images (any square size; DiGIT feeds 256 px) are mapped from [-1, 1] to ImageNet mean/std, resized
    bicubically to the extractor's 224 px, encoded by block ``layer`` + final LayerNorm of the frozen
    DINOv2 (CLS and registers dropped), and each patch feature takes the id of the nearest centroid
    (squared L2, ties to the lowest id, ``vqgan_lc.quantize.nearest_code``).

    Args:
        extractor: the frozen ``DINOv2Extractor`` (``build_dinov2`` / ``load_dinov2``).
        centroids: ``(K, d)`` k-means centres, or a ``Codebook`` (its provenance is checked and kept).
        spec: how to rebuild the extractor when loading a saved directory; needed to save a non-default
            architecture (e.g. ``model_kwargs`` of a custom timm ViT). ``from_files`` sets it.
        check_provenance: refuse centroids whose recorded extractor, block, pooling or weights differ.
        provenance: where this tokenizer came from (written to ``config.json``).
        preprocessing: how images are prepared for ``encode`` (``vqgan_lc.tokenizer``); default: the
            shorter side resized bicubically to ``spec.load_size`` (256), centre crop, [-1, 1].
    """

    kind: ClassVar[Literal["digit"]] = "digit"
    FORMAT: ClassVar[str] = DIGIT_FORMAT
    FORMAT_VERSION: ClassVar[int] = DIGIT_FORMAT_VERSION
    config_class: ClassVar[type[ExtractorSpec]] = ExtractorSpec
    WHAT: ClassVar[str] = "DiGIT tokenizer"
    centroids: torch.Tensor  # registered buffers
    centroid_sq_norms: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, extractor: DINOv2Extractor, centroids: torch.Tensor | Codebook, *,
                 spec: ExtractorSpec | None = None, check_provenance: bool = True,
                 provenance: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.provenance = dict(provenance or {})
        if not isinstance(extractor, DINOv2Extractor):
            raise ExtractorError(f"the DiGIT tokenizer needs a DINOv2Extractor, got {type(extractor).__name__}")
        codebook = centroids if isinstance(centroids, Codebook) else Codebook(torch.as_tensor(centroids).float())
        vectors = codebook.vectors.float().contiguous()
        if vectors.dim() != 2:
            raise CodebookError(f"centroids must be a (K, d) matrix, got {tuple(vectors.shape)}")
        self.extractor = extractor.eval()
        self.codebook_provenance = dict(codebook.provenance)
        self.register_buffer("centroids", vectors)
        self.register_buffer("centroid_sq_norms", vectors.pow(2).sum(1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.spec = spec or ExtractorSpec(model=extractor.model_name, layer=extractor.layer,
                                          load_size=extractor.preprocess.resize_to, image_size=extractor.resize_to)
        self._preprocessing = (check_preprocessing(preprocessing) if preprocessing is not None
                               else default_preprocessing(self.spec.load_size))
        self._weights_identity = state_dict_sha256(extractor.model)
        dim = self._feature_dim()
        if dim != vectors.shape[1]:
            raise CodebookError(f"the centroids are {vectors.shape[1]}-d but the extractor gives {dim}-d features; "
                                "build the codebook with the same DINOv2 model (vqgan-lc build-codebook --extractor dinov2)")
        if check_provenance:
            self._check_provenance()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, codebook: str | os.PathLike, weights: str | os.PathLike | None, *,
                   model: str = DEFAULT_DINOV2_MODEL, hub_dir: str | os.PathLike | None = None,
                   layer: int = DEFAULT_DINOV2_LAYER, load_size: int = 256, image_size: int = 224,
                   model_kwargs: dict[str, Any] | None = None, check_provenance: bool = True) -> DiscriminativeTokenizer:
        """Build from a ``build-codebook`` output (DINOv2 features, K centroids) and a local DINOv2 weights file,
        or, with ``weights=None``, the weights ``model`` names (a tagged timm name such as
        ``vit_base_patch14_reg4_dinov2.lvd142m``, or a torch.hub name such as ``dinov2_vitb14_reg``), fetched
        through that library's cache only then (``vqgan_lc.named_weights.dinov2_weights``)."""
        if weights is None:
            arch, _, tag = model.partition(".")
            if not tag and arch not in DINOV2_HUB_TO_TIMM:
                raise MissingWeightsError(f"no DINOv2 weights given for {model}; pass a local file with --weights, or "
                                          f"name pretrained ones, as in --dinov2-model {DEFAULT_DINOV2_MODEL}.lvd142m")
            weights, model, _ = dinov2_weights(model)
        weights = Path(weights).resolve()
        if not weights.is_file():
            raise MissingWeightsError(f"weights file {weights} does not exist; pass an existing local file with --weights")
        spec = ExtractorSpec(model=model, model_kwargs=dict(model_kwargs or {}),
                             hub_dir=str(hub_dir) if hub_dir else None, layer=layer, load_size=load_size,
                             image_size=image_size, weights=str(weights), weights_sha256=sha256_file(weights))
        return cls(build_dinov2(spec), load_codebook(codebook), spec=spec, check_provenance=check_provenance)

    def _feature_dim(self) -> int:
        m = self.extractor.model
        return int(getattr(m, "embed_dim", 0) or getattr(m, "num_features", 0))

    def _check_provenance(self) -> None:
        """Refuse centroids clustered from another extractor, layer or weights (when recorded)."""
        prov = self.codebook_provenance
        problems = []
        if prov.get("extractor") not in (None, "dinov2"):
            problems.append(f"they were clustered from {prov.get('extractor')!r} features, not dinov2")
        info = prov.get("extractor_info") or {}
        block = info.get("block_index")
        if block is not None and block != self.extractor.block_index:
            problems.append(f"they come from block {block}, this extractor uses block {self.extractor.block_index}")
        if prov.get("pooling") not in (None, 1):
            problems.append(f"they were clustered from {prov['pooling']}x{prov['pooling']}-pooled features")
        recorded = prov.get("weights_sha256")
        mine = {self.spec.weights_sha256, self._weights_identity} - {None}
        if recorded and mine and recorded not in mine:
            problems.append("they were clustered with other DINOv2 weights (weights_sha256 differs)")
        if problems:
            raise CodebookError("these centroids do not fit this DINOv2 extractor: " + "; ".join(problems)
                                + " (pass check_provenance=False / --no-provenance-check to use them anyway)")

    # ------------------------------------------------------------------ the tokenizer interface
    @property
    def codebook_size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def grid_size(self) -> int:
        return self.extractor.resize_to // self.extractor.patch_size

    @property
    def downsample_factor(self) -> int:
        """Pixels per token at the load size (256 / 16 = 16)."""
        return self.spec.load_size // self.grid_size

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared for ``encode`` (a copy; ``image_size`` is the 256 px load size)."""
        return dict(self._preprocessing)

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int]:
        """Token grid for a ``height x width`` input: always ``(224 / 14, 224 / 14) = (16, 16)``."""
        return self.grid_size, self.grid_size

    def config_dict(self) -> dict[str, Any]:
        """What determines the ids: extractor architecture, layer, sizes, weights and centroids."""
        s = self.spec
        return {
            "extractor": {"model": s.model, "model_kwargs": s.model_kwargs, "layer": s.layer,
                          "block_index": self.extractor.block_index, "load_size": s.load_size,
                          "image_size": s.image_size, "state_dict_sha256": self._weights_identity},
            "codebook": {"size": self.codebook_size, "dim": int(self.centroids.shape[1]),
                         "sha256": _tensor_sha256(self.centroids)},
        }

    def weights_hash(self) -> str:
        """The config hash already covers the weights (the extractor's state-dict sha256, the centroids')."""
        return self.config_hash()

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ImageShapeError(f"images must be a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        if not images.is_floating_point():
            raise ImageShapeError(f"images must be floats in [-1, 1], got dtype {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise ImageShapeError(f"the DiGIT tokenizer takes square images (256 x 256), got {images.shape[2]}x{images.shape[3]}")
        return ((images.float() + 1.0) * 0.5 - self.mean) / self.std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [-1, 1] -> ``(B, 16, 16, d)`` float32 DINOv2 features (block ``layer`` + final LN)."""
        return self.extractor(self._normalise(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [-1, 1] -> ``(B, 16, 16)`` int64 ids in ``[0, K)`` (nearest centroid).

        float16/bfloat16/float64 images are cast to the weights' dtype; NaN/Inf or values outside [-1, 1]
        (by more than 1e-2) raise ``ImageShapeError``."""
        f = self.features(self._encode_input(images))
        b, h, w, d = f.shape
        ids = nearest_code(f.reshape(-1, d), self.centroids, codebook_sq_norms=self.centroid_sq_norms)
        return ids.reshape(b, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def train(self, mode: bool = True) -> DiscriminativeTokenizer:  # frozen
        return super().train(False)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | os.PathLike, *, embed_weights: bool | None = None,
                        provenance: dict[str, Any] | None = None, push_to_hub: bool = False,
                        repo_id: str | None = None, token: str | bool | None = None) -> Path:
        """Write the tokenizer directory (see the module docstring).

        The DINOv2 weights are referenced by path + sha256 when the tokenizer was built from a file;
        ``embed_weights=True`` (or no source file) copies them into ``extractor.safetensors``.
        ``provenance`` replaces ``self.provenance`` in the written file; ``push_to_hub=True`` then uploads
        the directory to ``repo_id``.
        """
        check_save_directory(directory)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        spec = self.spec
        embed = embed_weights if embed_weights is not None else spec.weights is None
        if embed:
            state = {k: v.detach().cpu().contiguous() for k, v in self.extractor.model.state_dict().items()}
            atomic_save_safetensors(directory / EXTRACTOR_WEIGHTS_NAME, state, {"format": DIGIT_FORMAT})
            spec_d = {**asdict(spec), "weights": EXTRACTOR_WEIGHTS_NAME,
                      "weights_sha256": sha256_file(directory / EXTRACTOR_WEIGHTS_NAME), "embedded": True}
        else:
            spec_d = {**asdict(spec), "embedded": False}
            (directory / EXTRACTOR_WEIGHTS_NAME).unlink(missing_ok=True)
        save_codebook(directory / CODEBOOK_NAME, self.centroids.cpu(), self.codebook_provenance)
        meta = {
            "format": DIGIT_FORMAT,
            "format_version": DIGIT_FORMAT_VERSION,
            "extractor": spec_d,
            "codebook": {"file": CODEBOOK_NAME, **self.config_dict()["codebook"]},
            "grid": [self.grid_size, self.grid_size],
            "config_hash": self.config_hash(),
            "preprocessing": self.preprocessing,
            "provenance": dict(self.provenance if provenance is None else provenance),
        }
        atomic_write_json(directory / CONFIG_NAME, meta)
        return self._after_save(directory, push_to_hub=push_to_hub, repo_id=repo_id, token=token)

    @classmethod
    def _load_pretrained(cls, directory: Path) -> DiscriminativeTokenizer:
        """Read a directory written by ``save_pretrained`` (``from_pretrained`` calls it). A referenced
        weights file must exist and have the recorded sha256."""
        meta = read_digit_config(directory)
        pre = meta.get("preprocessing")
        if pre is not None:
            try:
                pre = check_preprocessing(pre)
            except ValueError as e:
                raise CheckpointError(f"{directory / CONFIG_NAME} has an invalid preprocessing block: {e}") from e
        spec_d = dict(meta["extractor"])
        embedded = bool(spec_d.pop("embedded", False))
        try:
            spec = ExtractorSpec(**spec_d)
        except TypeError as e:
            raise CheckpointError(f"{directory / CONFIG_NAME} has an invalid extractor spec: {e}") from e
        if embedded:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            path = directory / EXTRACTOR_WEIGHTS_NAME
            if not path.is_file():
                raise CheckpointError(f"{path} is missing; the tokenizer directory is incomplete")
            try:
                state = load_file(str(path))
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"{path} is corrupt or truncated ({e}); re-save the tokenizer directory") from e
            spec_run = ExtractorSpec(**{**asdict(spec), "weights": None, "weights_sha256": None})
            ext = build_dinov2(spec_run, state)
            spec = spec_run
        else:
            if spec.weights is None or not Path(spec.weights).is_file():
                raise MissingWeightsError(
                    f"{directory} refers to the DINOv2 weights file {spec.weights}, which does not exist here; "
                    f"put it there or re-save the tokenizer with embed_weights=True"
                )
            if spec.weights_sha256 and sha256_file(spec.weights) != spec.weights_sha256:
                raise CheckpointError(f"{spec.weights} is not the weights file this tokenizer was saved with "
                                      "(sha256 differs)")
            ext = build_dinov2(spec)
        codebook = load_codebook(directory / CODEBOOK_NAME)
        tok = cls(ext, codebook, spec=spec, check_provenance=False, provenance=meta.get("provenance") or {},
                  preprocessing=pre)
        if meta.get("config_hash") and tok.config_hash() != meta["config_hash"]:
            raise CheckpointError(f"{directory}: the rebuilt tokenizer's config hash {tok.config_hash()} differs from "
                                  f"the recorded {meta['config_hash']} (weights or centroids changed)")
        return tok


def read_digit_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a DiGIT tokenizer directory after checking format and version."""
    return read_format_json(Path(directory) / CONFIG_NAME, DIGIT_FORMAT, DIGIT_FORMAT_VERSION,
                            what="DiGIT tokenizer config", error=CheckpointError,
                            missing=f"{directory} is not a DiGIT tokenizer directory (no {CONFIG_NAME})",
                            upgrade="Upgrade vqgan-lc to load it.")


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a DiGIT tokenizer directory: backbone, layer, k, grid, sizes, weights; read
    without building the extractor (the codebook's shape is checked against ``config.json``)."""
    meta = read_digit_config(path)
    ext = meta.get("extractor") or {}
    cb_meta = meta.get("codebook") or {}
    cb_file = path / cb_meta.get("file", CODEBOOK_NAME)
    if not cb_file.is_file():
        raise CheckpointError(f"{cb_file} is missing; the DiGIT tokenizer directory is incomplete")
    cb_header, cb_tensors = safetensors_header(cb_file)
    shape = cb_tensors.get("codebook", ([0, 0], ""))[0]
    if [cb_meta.get("size"), cb_meta.get("dim")] != shape:
        raise CheckpointError(f"{cb_file} holds a {shape} codebook but config.json records "
                              f"{cb_meta.get('size')} x {cb_meta.get('dim')}; the directory is damaged")
    try:
        cb_prov = json.loads(cb_header.get("provenance", "{}"))
    except json.JSONDecodeError:
        cb_prov = {}
    info = cb_prov.get("extractor_info") or {}
    layer = ext.get("layer")
    block = f" (block {info['block_index']} of {info['depth']})" if "block_index" in info and "depth" in info else ""
    if ext.get("embedded"):
        weights = f"embedded ({EXTRACTOR_WEIGHTS_NAME}"
        w = path / EXTRACTOR_WEIGHTS_NAME
        weights += f", {millions(numel(safetensors_header(w)[1]))} parameters)" if w.is_file() else " is missing)"
    else:
        src = ext.get("weights")
        weights = f"{src} ({'present' if src and Path(src).is_file() else 'missing here'})"
    preprocessing = meta.get("preprocessing") or default_preprocessing(int(ext.get("load_size") or 256))
    fields = {
        "backbone": ext.get("model"),
        "layer": f"{layer}{block}",
        "k": cb_meta.get("size"),
        "dim": cb_meta.get("dim"),
        "grid": meta.get("grid"),
        "load_size": ext.get("load_size"),
        "image_size": ext.get("image_size"),
        "weights": weights,
        "config_hash": meta.get("config_hash"),
    }
    if ext.get("model_kwargs"):
        fields["model_kwargs"] = ext["model_kwargs"]
    return Description("DiGIT tokenizer directory", DIGIT_FORMAT, DIGIT_FORMAT_VERSION, fields,
                       {"extractor": ext, "codebook": cb_meta, "codebook_provenance": cb_prov,
                        "preprocessing": preprocessing, "provenance": meta.get("provenance") or {}})


def _tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous().float()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


__all__ = [
    "DEFAULT_DIGIT_K",
    "DIGIT_FORMAT",
    "DIGIT_FORMAT_VERSION",
    "DiscriminativeTokenizer",
    "ExtractorSpec",
    "build_dinov2",
    "describe",
    "read_digit_config",
]
