"""Typed, frozen architecture configs: what is saved in ``config.json`` next to the weights.

Training knobs (learning rate, loss weights of the GAN, ...) live in ``vqgan_lc.train``; only what is
needed to rebuild the network and reproduce its numbers lives here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

QuantizerKind = Literal["lc", "vq", "fc", "ema"]
Distance = Literal["euclidean", "cosine"]

_QUANTIZER_KINDS = ("lc", "vq", "fc", "ema")
_DISTANCES = ("euclidean", "cosine")


def check_fields(cls: type, d: dict[str, Any], what: str, hint: str = "") -> None:
    """Raise ``ValueError`` naming the keys of ``d`` that are not fields of the dataclass ``cls``
    (``what`` names the config in the sentence, ``hint`` is appended)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))}){hint}")


@dataclass(frozen=True)
class QuantizerConfig:
    """The quantizer: which kind and its numerics.

    kind:
        ``lc``  -- VQGAN-LC: frozen ``codebook_size x codebook_dim`` codebook (k-means centres of a
                   pretrained extractor's features) and a trainable ``Linear(codebook_dim -> embed_dim)``.
        ``vq``  -- taming VQGAN: trainable ``codebook_size x embed_dim`` codebook, uniform(+-1/N) init.
        ``fc``  -- VQGAN-FC: factorised low-dimensional codes; latents and codes L2-normalised.
        ``ema`` -- VQGAN-EMA: codebook updated by exponential moving averages, Laplace-smoothed.
    distance:
        ``euclidean`` is what the official code does (squared L2 on the projected 8-d vectors);
        ``cosine`` L2-normalises both sides first, as the paper's text says.
    """

    kind: QuantizerKind = "lc"
    codebook_size: int = 100_000
    codebook_dim: int = 768
    distance: Distance = "euclidean"
    commit_weight: float = 1.0
    codebook_weight: float = 0.33
    ema_decay: float = 0.99
    ema_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in _QUANTIZER_KINDS:
            raise ValueError(f"quantizer kind must be one of {_QUANTIZER_KINDS}, got {self.kind!r}")
        if self.distance not in _DISTANCES:
            raise ValueError(f"distance must be one of {_DISTANCES}, got {self.distance!r}")
        if self.codebook_size < 1 or self.codebook_dim < 1:
            raise ValueError("codebook_size and codebook_dim must be positive")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VQGAN-LC model (taming encoder/decoder + quantizer).

    ``embed_dim`` is D', the dimension of the quantized latent (8 for the paper's f16 model).
    ``ch_mult`` has one entry per resolution level; the downsampling factor is ``2 ** (len - 1)``.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    embed_dim: int = 8
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        # Accept lists (JSON, YAML) and store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if isinstance(self.quantizer, dict):
            object.__setattr__(self, "quantizer", QuantizerConfig(**self.quantizer))
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError("every channel count must be a multiple of 32 (GroupNorm with 32 groups)")
        if not self.ch_mult or self.num_res_blocks < 1 or self.embed_dim < 1:
            raise ValueError("ch_mult must be non-empty; num_res_blocks and embed_dim must be positive")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        newer = "; is the file from a newer vqgan-lc?"
        check_fields(cls, d, "model config", newer)
        d = dict(d)
        if "quantizer" in d and isinstance(d["quantizer"], dict):
            check_fields(QuantizerConfig, d["quantizer"], "quantizer config", newer)
            d["quantizer"] = QuantizerConfig(**d["quantizer"])
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with fields changed; ``quantizer`` may be a dict of quantizer fields to change."""
        q = changes.pop("quantizer", None)
        if isinstance(q, dict):
            changes["quantizer"] = dataclasses.replace(self.quantizer, **q)
        elif q is not None:
            changes["quantizer"] = q
        return dataclasses.replace(self, **changes)
