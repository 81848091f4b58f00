"""The ``loss`` and ``optim`` groups of ``VQGANLCModule`` (plain dataclasses; LightningCLI reads them).

Defaults are the official recipe (shared/reference/vqgan-lc-facts.md): the model group is
``vqgan_lc.build.ModelSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

DiscInput = Literal["reuse", "reforward"]
LPIPSDropout = Literal["off", "official"]


@dataclass(frozen=True)
class LossConfig:
    """Losses: ``rec_loss`` ``l1`` (``l2`` is the paper's text) x ``rec_weight`` 1, LPIPS x
    ``perceptual_weight`` 1 (needs ``lpips_weights``: a local torchvision VGG16 file;
    ``lpips_lin_weights`` defaults to the file inside the lpips package), quantizer loss x
    ``quantizer_weight`` 0.1, hinge GAN x ``gan_weight`` 0.1 x adaptive weight (clamped to
    ``[0, adaptive_weight_max]``), on once more than ``disc_start`` generator steps were taken (the
    official ``cur_iter > disc_start``). PatchGAN ``disc_layers`` 2, ``disc_ndf`` 64.

    Two official behaviours are options (default off: they only add noise or compute):

    - ``disc_input``: ``reuse`` (default) gives the discriminator the generator step's reconstruction
      from before the generator update; ``reforward`` runs the whole VQ forward again with the
      just-updated generator, as the official ``engine_training_vqgan.py`` does (one more forward
      per step, in training mode: an EMA quantizer then updates twice per step, like the official one).
    - ``lpips_dropout``: ``off`` (default) keeps LPIPS deterministic; ``official`` switches the
      dropout (p = 0.5) of the lin layers on in training, as the official code does by registering
      LPIPS under the model that ``model.train()`` reaches (noisier perceptual term and adaptive
      GAN weight)."""

    rec_loss: Literal["l1", "l2"] = "l1"
    rec_weight: float = 1.0
    perceptual_weight: float = 1.0
    quantizer_weight: float = 0.1
    gan_weight: float = 0.1
    disc_start: int = 50_000
    adaptive_weight_max: float = 1e4
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_layers: int = 2
    disc_ndf: int = 64
    lpips_weights: str | None = None
    lpips_lin_weights: str | None = None
    disc_input: DiscInput = "reuse"
    lpips_dropout: LPIPSDropout = "off"

    def __post_init__(self) -> None:
        if self.disc_start < 0:
            raise ConfigError(f"disc_start must be >= 0, got {self.disc_start}")
        if self.disc_input not in ("reuse", "reforward"):
            raise ConfigError(f"disc_input must be 'reuse' or 'reforward', got {self.disc_input!r}")
        if self.lpips_dropout not in ("off", "official"):
            raise ConfigError(f"lpips_dropout must be 'off' or 'official', got {self.lpips_dropout!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation: both Adams (generator and discriminator) with ``lr`` 5e-4 (the paper and README;
    ``runTrainVQ.sh`` uses 1e-4), ``betas`` (0.5, 0.9), ``eps`` 1e-7, ``weight_decay`` 0. Schedule:
    linear warm-up from 0 over ``warmup_steps`` generator steps (or ``warmup_epochs``, official 5, x
    batches per epoch when ``warmup_steps`` is None), then a half-cycle cosine to ``min_lr`` at
    ``max_steps`` generator steps (None: ``trainer.max_epochs`` x batches per epoch)."""

    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int | None = None
    warmup_epochs: float = 5.0
    max_steps: int | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-7
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0; got lr={self.lr}, min_lr={self.min_lr}")


__all__ = ["LossConfig", "OptimConfig"]
