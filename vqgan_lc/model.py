"""``VQGANLC``: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import CONFIG_NAME as CONFIG_NAME
from ._io import WEIGHTS_NAME as WEIGHTS_NAME
from ._io import load_weights_dir, save_weights_dir, state_dict_mismatch
from .config import ModelConfig
from .errors import CheckpointError, CodebookError, ImageShapeError, TokenRangeError
from .nn import Decoder, Encoder
from .quantize import (
    CodebookQuantizer,
    LCQuantizer,
    ProjectedCodebookQuantizer,
    QuantizerOutput,
    build_quantizer,
)

MODEL_FORMAT = "vqgan-lc-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelOutput:
    """``reconstruction`` (B, 3, H, W) and the quantizer's output (z_q, ids, loss terms, counts)."""

    reconstruction: torch.Tensor
    quantizer: QuantizerOutput


class VQGANLC(nn.Module):
    """A VQGAN with a (by default) VQGAN-LC quantizer.

    Images are ``(B, 3, H, W)`` floats in ``[-1, 1]`` with H and W multiples of
    ``downsample_factor``; token ids are ``(B, H/f, W/f)`` int64 in ``[0, codebook_size)``.
    """

    def __init__(self, config: ModelConfig, *, inference_only: bool = False) -> None:
        super().__init__()
        self.config = config
        common = dict(
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ModelConfig, codebook: torch.Tensor | None = None) -> VQGANLC:
        """Random weights; ``codebook`` (an ``(N, d)`` tensor) fills the frozen LC codebook and fixes N, d.

        A codebook *file* is read by ``vqgan_lc.create_model(name, codebook=path)`` or
        ``vqgan_lc.codebook.load_codebook(path).vectors`` (the model never imports the codebook builder).
        """
        if codebook is None:
            return cls(config)
        if not isinstance(codebook, torch.Tensor):
            raise CodebookError(
                f"from_config takes the codebook as an (N, d) tensor, got {type(codebook).__name__}; pass "
                "load_codebook(path).vectors (vqgan_lc.codebook) or use create_model(name, codebook=path)"
            )
        if config.quantizer.kind != "lc":
            raise ValueError("a k-means codebook is only used by the 'lc' quantizer")
        config = config.replace(quantizer={"codebook_size": codebook.shape[0], "codebook_dim": codebook.shape[1]})
        model = cls(config)
        model.quantize.set_codebook(codebook)
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

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        f = self.downsample_factor
        return height // f, width // f

    # ------------------------------------------------------------------ checks
    def _check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ImageShapeError(f"images must be a (B, C, H, W) tensor, got {shape}")
        if not x.is_floating_point():
            raise ImageShapeError(f"images must be floats in [-1, 1], got dtype {x.dtype}")
        c, h, w = x.shape[1:]
        if c != self.config.in_channels:
            raise ImageShapeError(
                f"images have {c} channels but the model expects {self.config.in_channels} (RGB); "
                "convert grayscale/RGBA images to RGB first"
            )
        f = self.downsample_factor
        if h % f or w % f or h == 0 or w == 0:
            raise ImageShapeError(
                f"image size {h}x{w} is not a multiple of the downsampling factor {f}; "
                f"resize or crop to e.g. {max(f, h // f * f)}x{max(f, w // f * f)}"
            )

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 3:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TokenRangeError(f"ids must be a (B, h, w) integer tensor, got {shape}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TokenRangeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.codebook_size:
                raise TokenRangeError(
                    f"ids must lie in [0, {self.codebook_size}) for this codebook; got values in [{lo}, {hi}]. "
                    "Were they made with another model?"
                )

    # ------------------------------------------------------------------ the API
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> pre-quantization latent ``(B, D', H/f, W/f)``."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def quantize_latents(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize a ``(B, D', h, w)`` latent (the LDM/DiT/SiT latent) to the nearest codes."""
        return self.quantize(z)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``(B, D', h, w)`` quantized latent -> images ``(B, 3, h*f, w*f)`` (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> token ids ``(B, H/f, W/f)`` int64 (the search only: no losses)."""
        return self.quantize.search(self.encode_latents(images))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, h, w)`` -> images ``(B, 3, h*f, w*f)`` (not clamped)."""
        self._check_ids(ids)
        return self.decode_latents(self.quantize.decode(ids.long().to(self.quant_conv.weight.device)))

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """Training/eval pass: reconstruction plus quantizer output. Losses are computed by the caller."""
        q = self.quantize(self.encode_latents(images))
        return ModelOutput(reconstruction=self.decode_latents(q.z_q), quantizer=q)

    # ------------------------------------------------------------------ files
    def config_hash(self) -> str:
        """A short hash of the architecture (what token files record to refuse a mismatched model)."""
        blob = json.dumps(self.config.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save_pretrained(
        self, directory: str | os.PathLike, *, inference_only: bool = False, provenance: dict[str, Any] | None = None
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``.

        ``inference_only=True`` keeps only the projected ``(N, D')`` codes instead of the raw
        codebook and projector; the loaded model encodes and decodes identically but cannot train.
        """
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        export = inference_only or self.inference_only
        if inference_only and not self.inference_only:
            if not isinstance(self.quantize, LCQuantizer):
                raise ValueError("inference-only export exists for the 'lc' quantizer only")
            for k in [k for k in state if k.startswith("quantize.")]:
                del state[k]
            state["quantize.projected"] = self.quantize.projected_codebook().cpu().contiguous()
        meta = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "weights": "inference" if export else "full",
            "config": self.config.to_dict(),
            "provenance": provenance or getattr(self, "provenance", {}) or {},
        }
        return save_weights_dir(directory, meta, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VQGANLC:
        """Load a model directory written by ``save_pretrained`` (or ``vqgan-lc convert``)."""
        meta, config, state, w_path = load_weights_dir(
            directory, MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelConfig.from_dict, what="vqgan-lc model",
            hint="official .pth checkpoints are converted with `vqgan-lc convert`",
            upgrade="Upgrade vqgan-lc (pip install -U vqgan-lc) to load it.", device=str(map_location),
        )
        model = cls(config, inference_only=meta.get("weights") == "inference")
        model.load_state_dict_checked(state, source=str(w_path))
        model.provenance = meta.get("provenance", {})
        return model.to(map_location).eval()

    def load_state_dict_checked(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error."""
        problem = state_dict_mismatch(self.state_dict(), state)
        if problem:
            raise CheckpointError(f"{source} does not fit this model config: {problem}")
        self.load_state_dict(state)
