"""MAGE's VQGAN: the 1024-code f16 tokenizer that DiGIT's stage 2 decodes to pixels.

The model (``vqgan_jax_strongaug.ckpt`` in MAGE and DiGIT: ch 128, ch_mult (1, 1, 2, 2, 4), two
residual blocks per level, 1024 codes x 256 dims, 54,515,587 parameters) is the MaskGIT VQGAN,
not taming's: no attention, average-pool downsampling, no quant_conv / post_quant_conv, and a
shortcut on the residual block's output (``vqgan_lc.nn.mage_blocks``). Its pixels are RGB in
[0, 1]; ``MAGEVQGAN`` takes and returns [-1, 1] like every tokenizer of the package and converts
inside. Codes are found by squared Euclidean distance (``nearest_code``: exact, ties to the lowest
id, as the official ``argmin``); there is no l2-normalisation.

Directory (``format: vqgan-lc-mage``, version 1)::

    config.json         format, format_version, kind, config (MAGEConfig fields), config_hash, provenance
    model.safetensors   the state dict, under the official parameter names

Official checkpoints are converted with ``vqgan-lc convert --format mage`` (``vqgan_lc.convert_mage``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .config import check_fields
from .formats import Description, millions
from .nn.mage_blocks import MAGEDecoder, MAGEEncoder
from .pretrained import PretrainedMixin
from .quantize.search import nearest_code
from .tokenizer import ImageTokenizerMixin, default_preprocessing

log = logging.getLogger(__name__)

MAGE_FORMAT = "vqgan-lc-mage"
MAGE_FORMAT_VERSION = 1
MAGE_KIND: Literal["mage-vqgan"] = "mage-vqgan"


@dataclass(frozen=True)
class MAGEConfig:
    """Architecture of MAGE's VQGAN; the defaults are the released ``vqgan_jax_strongaug.ckpt``.

    ``z_channels`` must equal ``embed_dim`` (the encoder emits code vectors directly).
    ``resolution`` is the image size the model was trained at; it only sets the default
    preprocessing size (the network is fully convolutional). ``beta`` weighs the commitment term
    of the quantizer loss ``forward`` reports (the legacy VQGAN loss).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    beta: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult or self.num_res_blocks < 1 or self.n_embed < 1 or self.embed_dim < 1:
            raise ValueError("ch_mult must be non-empty; num_res_blocks, n_embed and embed_dim must be positive")
        if self.ch < 1 or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch and every ch_mult entry must be positive, got ch={self.ch}, ch_mult={self.ch_mult}")
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError("every channel count must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.z_channels != self.embed_dim:
            raise ValueError(f"z_channels ({self.z_channels}) must equal embed_dim ({self.embed_dim}): MAGE's VQGAN "
                             "has no quant_conv")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAGEConfig:
        check_fields(cls, d, "MAGE config", "; is the file from a newer vqgan-lc?")
        return cls(**d)

    def replace(self, **changes: Any) -> MAGEConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class MAGEOutput:
    """``forward``'s result. ``reconstruction`` is in [-1, 1] space (not clamped); ``z`` the encoder
    output, ``z_q`` its straight-through quantized value, ``ids`` (B, h, w), ``loss`` the legacy
    quantizer loss ``mean((z_q - z)^2) * (1 + beta)`` (codebook + commitment terms)."""

    reconstruction: torch.Tensor
    z: torch.Tensor
    z_q: torch.Tensor
    ids: torch.Tensor
    loss: torch.Tensor


class MAGEQuantizer(nn.Module):
    """The codebook ``embedding`` (n_embed x embed_dim) and the nearest-code rule."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` latent -> ``(B, h, w)`` int64 ids of the nearest codes (squared L2)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        return nearest_code(flat, self.embedding.weight).reshape(b, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` ids -> ``(B, D, h, w)`` code vectors."""
        return self.embedding(ids).permute(0, 3, 1, 2).contiguous()


class MAGEVQGAN(ImageTokenizerMixin, PretrainedMixin, nn.Module):
    """MAGE's VQGAN behind the package's tokenizer interface.

    Images are ``(B, 3, H, W)`` floats in ``[-1, 1]`` with H and W multiples of
    ``downsample_factor`` (16); ids are ``(B, H/16, W/16)`` int64 in ``[0, n_embed)``. Inside, the
    network sees ``(x + 1) / 2`` and its [0, 1] output is mapped back with ``2 y - 1``.
    """

    kind: Literal["mage-vqgan"] = MAGE_KIND
    FORMAT = MAGE_FORMAT
    FORMAT_VERSION = MAGE_FORMAT_VERSION
    config_class = MAGEConfig
    WHAT = "MAGE VQGAN model"
    LOAD_HINT = "official MAGE checkpoints are converted with `vqgan-lc convert --format mage`"

    def __init__(self, config: MAGEConfig | None = None, *, provenance: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.provenance = dict(provenance or {})
        self.config = config = config or MAGEConfig()
        common: dict[str, Any] = dict(ch=config.ch, ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks,
                      z_channels=config.z_channels, dropout=config.dropout)
        self.encoder = MAGEEncoder(in_channels=config.in_channels, **common)
        self.decoder = MAGEDecoder(out_ch=config.out_ch, **common)
        self.quantize = MAGEQuantizer(config.n_embed, config.embed_dim)

    # ------------------------------------------------------------------ the tokenizer interface
    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared before ``encode`` (DiGIT's eval transform, then mapped to [-1, 1])."""
        return default_preprocessing(self.config.resolution)

    def config_dict(self) -> dict[str, Any]:
        """The kind and the architecture: what ``config_hash`` (recorded by token directories) hashes."""
        return {"kind": self.kind, **self.config.to_dict()}

    # ------------------------------------------------------------------ the API
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> pre-quantization latent ``(B, embed_dim, H/16, W/16)``."""
        self._check_images(images, self.config.in_channels)
        return self.encoder((images + 1.0) * 0.5)

    def latents_to_ids(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim, h, w)`` latent -> ``(B, h, w)`` ids of the nearest codes."""
        return self.quantize.ids(z)

    def ids_to_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` ids -> quantized latent ``(B, embed_dim, h, w)`` (the codebook rows)."""
        ids = self._decode_input(ids)
        self._check_ids(ids)
        return self.quantize.lookup(ids.long().to(self.quantize.embedding.weight.device))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim, h, w)`` latent -> images ``(B, 3, 16h, 16w)`` in [-1, 1] space (not clamped)."""
        return self.decoder(z_q) * 2.0 - 1.0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> token ids ``(B, H/16, W/16)`` int64 (float16/bfloat16/float64 images
        are cast to the weights' dtype; NaN/Inf or values outside [-1, 1] raise ``ImageShapeError``)."""
        return self.latents_to_ids(self.encode_latents(self._encode_input(images)))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, h, w)`` of any integer dtype (uint32 too) -> images ``(B, 3, 16h, 16w)`` in [-1, 1]
        space (not clamped)."""
        return self.decode_latents(self.ids_to_latents(ids))

    def forward(self, images: torch.Tensor) -> MAGEOutput:
        """Encode, quantize (straight-through) and decode; no loss beyond the quantizer's."""
        z = self.encode_latents(images)
        ids = self.latents_to_ids(z)
        codes = self.quantize.lookup(ids)
        loss = torch.mean((codes.detach() - z) ** 2) + self.config.beta * torch.mean((codes - z.detach()) ** 2)
        z_q = z + (codes - z).detach()
        return MAGEOutput(reconstruction=self.decode_latents(z_q), z=z, z_q=z_q, ids=ids, loss=loss)

    # ------------------------------------------------------------------ files (PretrainedMixin)
    def _config_extra(self) -> dict[str, Any]:
        return {"kind": self.kind, "config_hash": self.config_hash()}


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a MAGE VQGAN directory."""
    model = MAGEVQGAN.from_pretrained(path)
    c = model.config
    fields = {"codebook_size": c.n_embed, "embed_dim": c.embed_dim, "downsample_factor": c.downsample_factor,
              "resolution": c.resolution, "parameters": millions(sum(p.numel() for p in model.parameters())),
              "config_hash": model.config_hash()}
    return Description("MAGE VQGAN directory", MAGE_FORMAT, MAGE_FORMAT_VERSION, fields,
                       {"config": c.to_dict(), "preprocessing": model.preprocessing, "provenance": model.provenance})


__all__ = ["MAGE_FORMAT", "MAGE_FORMAT_VERSION", "MAGE_KIND", "MAGEConfig", "MAGEOutput", "MAGEQuantizer",
           "MAGEVQGAN"]
