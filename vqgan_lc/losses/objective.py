"""The full VQGAN-LC training objective, without Lightning: generator loss and discriminator loss.

Generator (official ``models_vq.py``, defaults in brackets)::

    nll   = rec_weight [1] * rec(x, x_hat) [L1] + perceptual_weight [1] * LPIPS(x, x_hat)
    total = nll + quantizer_weight [0.1] * (commit + 0.33 * codebook)
            + gan_weight [0.1] * adaptive_weight * (-mean D(x_hat))        (once the GAN is active)

``adaptive_weight = clamp(|grad_W nll| / (|grad_W g| + 1e-4), 0, 1e4)`` with ``W`` the decoder's last
layer. Discriminator: hinge loss on ``D(x)`` and ``D(sg(x_hat))``.

Differences from the official code, none of which changes a loss value once the GAN is on: the
adaptive weight and ``D(x_hat)`` are computed only while the GAN is active (the official code
computes both every step and multiplies them by 0 before ``disc_start``). By default the
discriminator step reuses the generator step's reconstruction; the official re-forward with the
just-updated generator is the training option ``disc_input: reforward`` (``vqgan_lc.train.LossConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..quantize import QuantizerOutput
from .adversarial import (
    DiscLoss,
    RecLoss,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    per_image_reconstruction_loss,
)
from .discriminator import NLayerDiscriminator
from .perceptual import PerceptualLoss


@dataclass
class LossOutput:
    """A scalar ``loss`` to back-propagate and detached scalar ``terms`` for logging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class VQGANLoss(nn.Module):
    """Holds the discriminator and (optionally) the LPIPS network; computes both players' losses.

    Args:
        perceptual: a ``PerceptualLoss`` or ``None`` (then ``perceptual_weight`` must be 0).
        rec_loss: ``"l1"`` (official code) or ``"l2"`` (paper text).
        disc_layers, disc_ndf: PatchGAN depth and width (official: 2, 64).
    """

    def __init__(
        self,
        *,
        perceptual: PerceptualLoss | None = None,
        rec_loss: RecLoss = "l1",
        rec_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        quantizer_weight: float = 0.1,
        gan_weight: float = 0.1,
        adaptive_weight_max: float = 1e4,
        disc_loss: DiscLoss = "hinge",
        disc_layers: int = 2,
        disc_ndf: int = 64,
    ) -> None:
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a PerceptualLoss")
        if min(rec_weight, perceptual_weight, quantizer_weight, gan_weight, adaptive_weight_max) < 0:
            raise ValueError("loss weights must be >= 0")
        self.perceptual = perceptual if perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(3, disc_ndf, disc_layers)
        self.rec_loss = rec_loss
        self.rec_weight = rec_weight
        self.perceptual_weight = perceptual_weight
        self.quantizer_weight = quantizer_weight
        self.gan_weight = gan_weight
        self.adaptive_weight_max = adaptive_weight_max
        self.disc_loss = disc_loss

    def generator_loss(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        quantizer: QuantizerOutput,
        *,
        last_layer: torch.Tensor | None = None,
        gan_active: bool = False,
    ) -> LossOutput:
        """Total generator loss for images ``(B, 3, H, W)`` and their reconstruction (same shape).

        With ``gan_active`` the adversarial term is added with the adaptive weight computed against
        ``last_layer`` (required then, and autograd must be enabled).
        """
        rec = per_image_reconstruction_loss(images, reconstruction, self.rec_loss).mean()
        nll = self.rec_weight * rec
        terms = {"rec_loss": rec.detach()}
        if self.perceptual is not None:
            p = self.perceptual(images, reconstruction).float().mean()
            nll = nll + self.perceptual_weight * p
            terms["perceptual_loss"] = p.detach()
        q = quantizer.loss.float()
        total = nll + self.quantizer_weight * q
        terms.update(
            nll_loss=nll.detach(),
            quantizer_loss=q.detach(),
            commit_loss=quantizer.commit_loss.detach().float(),
            codebook_loss=quantizer.codebook_loss.detach().float(),
        )
        if gan_active and self.gan_weight > 0:
            if last_layer is None:
                raise ValueError("the adaptive GAN weight needs the decoder's last layer")
            g = generator_loss(self.discriminator(reconstruction))
            d_weight = adaptive_weight(nll, g, last_layer, max_weight=self.adaptive_weight_max)
            total = total + self.gan_weight * d_weight * g
            terms.update(g_loss=g.detach(), d_weight=d_weight)
        terms["loss"] = total.detach()
        return LossOutput(total, terms)

    def discriminator_step_loss(self, images: torch.Tensor, reconstruction: torch.Tensor) -> LossOutput:
        """Discriminator loss on real ``images`` and (detached) ``reconstruction``, both ``(B, 3, H, W)``."""
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        d = discriminator_loss(logits_real, logits_fake, self.disc_loss)
        return LossOutput(
            d,
            {
                "d_loss": d.detach(),
                "logits_real": logits_real.detach().float().mean(),
                "logits_fake": logits_fake.detach().float().mean(),
            },
        )
