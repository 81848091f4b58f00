"""Named presets: ``create_model("vqgan-lc-f16-100k")``, ``list_models()``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ModelConfig, QuantizerConfig
from .errors import UnknownPresetError

if TYPE_CHECKING:
    from .model import VQGANLC

_PRESETS: dict[str, ModelConfig] = {
    # The paper's f16 model (official vq-f16.yaml, --embed_dim 8): 256 px -> 16x16 tokens.
    "vqgan-lc-f16-100k": ModelConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
        resolution=256, embed_dim=8, quantizer=QuantizerConfig(codebook_size=100_000, codebook_dim=768),
    ),
    # The f16 model with the 16,384-entry codebook (released on request, issue #1 of the official repo).
    "vqgan-lc-f16-16k": ModelConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
        resolution=256, embed_dim=8, quantizer=QuantizerConfig(codebook_size=16_384, codebook_dim=768),
    ),
    # The paper's f8 model (official vq-f8.yaml, --embed_dim 4): 256 px -> 32x32 tokens.
    "vqgan-lc-f8-100k": ModelConfig(
        ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
        resolution=256, embed_dim=4, quantizer=QuantizerConfig(codebook_size=100_000, codebook_dim=768),
    ),
    # The paper's baselines at 16,384 codes as the official code builds them (--tuning_codebook -1,
    # no projector): a random N x D' codebook, U(+-1/N), Euclidean, D' = 8 like the LC recipe;
    # trained by gradient (VQGAN-FC) or by moving averages (VQGAN-EMA).
    "vqgan-fc-f16-16k": ModelConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
        resolution=256, embed_dim=8, quantizer=QuantizerConfig(kind="fc", codebook_size=16_384),
    ),
    "vqgan-ema-f16-16k": ModelConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
        resolution=256, embed_dim=8, quantizer=QuantizerConfig(kind="ema", codebook_size=16_384),
    ),
    # Small enough to train in minutes on 2 CPU cores: 64 px -> 8x8 tokens, 768-d pixel-patch codebook.
    "tiny": ModelConfig(
        ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(8,), z_channels=64,
        resolution=64, embed_dim=8, quantizer=QuantizerConfig(codebook_size=1024, codebook_dim=768),
    ),
}


def list_models() -> list[str]:
    """Names of the presets, sorted."""
    return sorted(_PRESETS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset's config with ``overrides`` applied (``quantizer`` may be a dict of its fields)."""
    if name not in _PRESETS:
        raise UnknownPresetError("preset", name, list_models())
    return _PRESETS[name].replace(**overrides) if overrides else _PRESETS[name]


def create_model(name: str, codebook: Any = None, **overrides: Any) -> VQGANLC:
    """Build a preset with random weights.

    ``codebook`` (optional) is a ``(N, d)`` tensor or a path to a codebook file; N and d then
    override the preset's ``codebook_size``/``codebook_dim``.
    """
    import torch

    from .model import VQGANLC

    if codebook is not None and not isinstance(codebook, torch.Tensor):
        from .codebook.io import load_codebook

        codebook = load_codebook(codebook).vectors
    return VQGANLC.from_config(get_config(name, **overrides), codebook=codebook)
