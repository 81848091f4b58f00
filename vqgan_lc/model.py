"""``VQGANLC``: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

Directory (``format: vqgan-lc-model``, version 1): ``config.json`` (``format``, ``format_version``,
``weights`` (``full`` / ``inference``), ``config`` (the ``ModelConfig``), ``preprocessing`` (how images
were prepared: see ``vqgan_lc.tokenizer``; directories written before it existed get the default for
the model's resolution), ``provenance``, ``weights_sha256`` (of ``model.safetensors``, checked on load) and,
for an inference export, ``quantizer_hash`` (the full model's, so that both exports have one
``weights_hash``)) plus ``model.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, CodebookError
from .formats import Description, millions
from .nn import Decoder, Encoder
from .pretrained import PretrainedMixin
from .quantize import (
    CodebookQuantizer,
    LCQuantizer,
    ProjectedCodebookQuantizer,
    QuantizerOutput,
    build_quantizer,
)
from .tokenizer import ImageTokenizerMixin, check_preprocessing, default_preprocessing

MODEL_FORMAT = "vqgan-lc-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelOutput:
    """``reconstruction`` (B, 3, H, W) and the quantizer's output (z_q, ids, loss terms, counts)."""

    reconstruction: torch.Tensor
    quantizer: QuantizerOutput


_HASH_DEFAULTS: dict[str, Any] = {"ema_update": "training", "projector": "linear", "codebook_trainable": False}


class VQGANLC(ImageTokenizerMixin, PretrainedMixin, nn.Module):
    """A VQGAN with a (by default) VQGAN-LC quantizer; a ``vqgan_lc.tokenizer.DecodingTokenizer``.

    Images are ``(B, 3, H, W)`` floats in ``[-1, 1]`` with H and W multiples of
    ``downsample_factor``; token ids are ``(B, H/f, W/f)`` int64 in ``[0, codebook_size)``.

    Args:
        config: the architecture.
        inference_only: keep only the projected ``(N, D')`` codes (an inference export).
        provenance: where the weights came from (written to ``config.json``).
        preprocessing: how images are prepared for ``encode`` (the dict of ``vqgan_lc.tokenizer``);
            default: resize the shorter side bicubically to ``config.resolution``, centre crop, [-1, 1].
    """

    kind: ClassVar[Literal["vqgan-lc"]] = "vqgan-lc"
    FORMAT: ClassVar[str] = MODEL_FORMAT
    FORMAT_VERSION: ClassVar[int] = MODEL_FORMAT_VERSION
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    WHAT: ClassVar[str] = "vqgan-lc model"
    LOAD_HINT: ClassVar[str] = "official .pth checkpoints are converted with `vqgan-lc convert`"

    def __init__(self, config: ModelConfig, *, inference_only: bool = False,
                 provenance: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.provenance = dict(provenance or {})
        self._preprocessing = check_preprocessing(preprocessing) if preprocessing is not None \
            else default_preprocessing(config.resolution)
        common: dict[str, Any] = dict(
            ch=config.ch,
            ch_mult=config.ch_mult,
            num_res_blocks=config.num_res_blocks,
            attn_resolutions=config.attn_resolutions,
            z_channels=config.z_channels,
            resolution=config.resolution,
            dropout=config.dropout,
        )
        self.encoder = Encoder(in_channels=config.in_channels, **common)
        self.decoder = Decoder(out_ch=config.out_ch, **common)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.quantize: CodebookQuantizer = build_quantizer(config, inference_only=inference_only)
        self._source_quantizer_hash: str | None = None
        """An inference export's record of the full model's ``quantizer_hash`` (its projected codes are derived)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ModelConfig, codebook: torch.Tensor | None = None, *,
                    provenance: dict[str, Any] | None = None) -> VQGANLC:
        """Random weights; ``codebook`` (an ``(N, d)`` tensor) fills the frozen LC codebook and fixes N, d.

        A codebook *file* is read by ``vqgan_lc.create_model(name, codebook=path)`` or
        ``vqgan_lc.codebook.load_codebook(path).vectors`` (the model never imports the codebook builder).
        """
        if codebook is None:
            return cls(config, provenance=provenance)
        if not isinstance(codebook, torch.Tensor):
            raise CodebookError(
                f"from_config takes the codebook as an (N, d) tensor, got {type(codebook).__name__}; pass "
                "load_codebook(path).vectors (vqgan_lc.codebook) or use create_model(name, codebook=path)"
            )
        if config.quantizer.kind != "lc":
            raise ValueError("a k-means codebook is only used by the 'lc' quantizer")
        config = config.replace(quantizer={"codebook_size": codebook.shape[0], "codebook_dim": codebook.shape[1]})
        model = cls(config, provenance=provenance)
        model.quantize.set_codebook(codebook)  # type: ignore[operator]
        return model

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def codebook_size(self) -> int:
        return self.config.quantizer.codebook_size

    @property
    def inference_only(self) -> bool:
        return isinstance(self.quantize, ProjectedCodebookQuantizer)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared for ``encode`` (a copy): ``image_size``, ``resize``, ``interpolation``,
        ``crop``, ``range``; ``vqgan-lc encode`` defaults to it."""
        return dict(self._preprocessing)

    def config_dict(self) -> dict[str, Any]:
        """The config ``config_hash`` hashes: quantizer fields added after token directories were first
        written are left out at their defaults (and ``fc-cosine`` hashes as the ``fc`` it was saved as), so
        every earlier model keeps its hash and its token directories stay valid."""
        d = self.config.to_dict()
        q = d["quantizer"]
        for key, default in _HASH_DEFAULTS.items():
            if q.get(key) == default:
                q.pop(key)
        if q.get("kind") == "fc-cosine":
            q["kind"] = "fc"
        return d

    def set_preprocessing(self, **fields: Any) -> None:
        """Change fields of the preprocessing block (validated), e.g. ``resize="official"`` after training
        on images prepared by the official rule; it is saved with the weights."""
        block = {**self._preprocessing, **fields}
        if fields.get("resize") == "official":
            block["interpolation"] = "bilinear"
        elif fields.get("resize") == "shorter-side" and "interpolation" not in fields:
            block["interpolation"] = "bicubic"
        self._preprocessing = check_preprocessing(block)

    # ------------------------------------------------------------------ the API
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> pre-quantization latent ``(B, D', H/f, W/f)``.

        ``quant_conv`` runs with autocast off, in the weights' dtype (float32 unless the model was
        cast): under bf16 mixed precision the D'-dim latent reaches the nearest-code search unrounded,
        as in the official fp32 code (only the encoder runs in bf16).
        """
        self._check_images(images, self.config.in_channels)
        h = self.encoder(images)
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.quant_conv(h.to(self.quant_conv.weight.dtype))

    def quantize_latents(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize a ``(B, D', h, w)`` latent (the LDM/DiT/SiT latent) to the nearest codes."""
        return self.quantize(z)

    @torch.no_grad()
    def latents_to_ids(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D', h, w)`` pre-quantization latent -> ``(B, h, w)`` int64 ids (``encode`` = this after
        ``encode_latents``; ``vqgan-lc encode --latents`` keeps both from one encoder pass)."""
        return self.quantize.search(z)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``(B, D', h, w)`` quantized latent -> images ``(B, 3, h*f, w*f)`` (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> token ids ``(B, H/f, W/f)`` int64 (the search only: no losses).

        float16/bfloat16/float64 images are cast to the weights' dtype (float32 unless the model was cast);
        NaN/Inf, or values outside [-1, 1] by more than 1e-2 ([0, 1] or [0, 255] pixels), raise
        ``ImageShapeError``: map pixels with ``x / 127.5 - 1`` or prepare files with ``preprocess``.
        """
        return self.quantize.search(self.encode_latents(self._encode_input(images)))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, h, w)`` of any integer dtype (the uint32 of token files too) in
        ``[0, codebook_size)`` -> images ``(B, 3, h*f, w*f)`` (not clamped)."""
        ids = self._decode_input(ids)
        self._check_ids(ids)
        return self.decode_latents(self.quantize.decode(ids.long().to(self.quant_conv.weight.device)))

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """Training/eval pass: reconstruction plus quantizer output. Losses are computed by the caller."""
        q = self.quantize(self.encode_latents(images))
        return ModelOutput(reconstruction=self.decode_latents(q.z_q), quantizer=q)

    # ------------------------------------------------------------------ identity
    def quantizer_hash(self) -> str:
        """sha256 of the quantizer's tensors; an inference export loaded from a directory reports the full
        model's (recorded at export), so tokens of the full model and of its inference export match."""
        if self.inference_only and self._source_quantizer_hash is not None:
            return self._source_quantizer_hash
        return super().quantizer_hash()

    # ------------------------------------------------------------------ files
    def _config_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"weights": "inference" if self.inference_only else "full",
                                 "preprocessing": self.preprocessing}
        if self.inference_only:
            extra["quantizer_hash"] = self.quantizer_hash()
        return extra

    def save_pretrained(
        self, directory: str | os.PathLike, *, inference_only: bool = False, provenance: dict[str, Any] | None = None,
        push_to_hub: bool = False, repo_id: str | None = None, token: str | bool | None = None,
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``.

        ``inference_only=True`` keeps only the projected ``(N, D')`` codes instead of the raw
        codebook and projector; the loaded model encodes and decodes identically but cannot train.
        An inference-only model always saves as one. ``provenance`` replaces ``self.provenance`` in the file.
        ``push_to_hub=True`` then uploads the directory to ``repo_id`` with a model card (``vqgan_lc.hub``).
        """
        if not inference_only or self.inference_only:
            return super().save_pretrained(directory, provenance=provenance, push_to_hub=push_to_hub,
                                           repo_id=repo_id, token=token)
        if not isinstance(self.quantize, LCQuantizer):
            raise ValueError("inference-only export exists for the 'lc' quantizer only")
        state = {k: v for k, v in self._state_to_save().items() if not k.startswith("quantize.")}
        state["quantize.projected"] = self.quantize.projected_codebook().detach().cpu().contiguous()
        extra = {**self._config_extra(), "weights": "inference", "quantizer_hash": self.quantizer_hash()}
        out = self._write_pretrained(directory, state, extra, provenance)
        return self._after_save(out, push_to_hub=push_to_hub, repo_id=repo_id, token=token)

    @classmethod
    def _build_loaded(cls, config: ModelConfig, meta: dict[str, Any], directory: Path) -> VQGANLC:
        pre = meta.get("preprocessing")
        if pre is not None:
            try:
                pre = check_preprocessing(pre)
            except ValueError as e:
                raise CheckpointError(f"{directory / 'config.json'} has an invalid preprocessing block: {e}") from e
        model = cls(config, inference_only=meta.get("weights") == "inference",
                     provenance=meta.get("provenance") or {}, preprocessing=pre)
        recorded = meta.get("quantizer_hash")
        if model.inference_only and isinstance(recorded, str):
            model._source_quantizer_hash = recorded
        return model


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a model directory: quantizer, sizes, weights kind, parameters, config hash."""
    model = VQGANLC.from_pretrained(path)
    c = model.config
    q = c.quantizer
    fields = {
        "quantizer": q.kind,
        "codebook_size": q.codebook_size,
        "codebook_dim": q.codebook_dim,
        "embed_dim": c.embed_dim,
        "downsample_factor": c.downsample_factor,
        "resolution": c.resolution,
        "image_size": model.preprocessing["image_size"],
        "weights": "inference (projected codes only)" if model.inference_only else "full",
        "parameters": millions(sum(p.numel() for p in model.parameters())),
        "config_hash": model.config_hash(),
        "weights_hash": model.weights_hash(),
    }
    return Description("model directory", MODEL_FORMAT, MODEL_FORMAT_VERSION, fields,
                       {"config": c.to_dict(), "preprocessing": model.preprocessing, "provenance": model.provenance})
