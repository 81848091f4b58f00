"""Loss terms of VQGAN training: reconstruction, hinge GAN, and the adaptive GAN weight.

All functions take images ``(B, 3, H, W)`` in [-1, 1] or discriminator logits ``(B, 1, h, w)`` and
return scalar tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RecLoss = Literal["l1", "l2"]
DiscLoss = Literal["hinge", "vanilla"]


def reconstruction_loss(images: torch.Tensor, reconstruction: torch.Tensor, kind: RecLoss = "l1") -> torch.Tensor:
    """Mean absolute (``l1``, the official code) or squared (``l2``, the paper's Eq. 1) pixel error."""
    return per_image_reconstruction_loss(images, reconstruction, kind).mean()


def per_image_reconstruction_loss(
    images: torch.Tensor, reconstruction: torch.Tensor, kind: RecLoss = "l1"
) -> torch.Tensor:
    """``(B,)``: the reconstruction loss of each image, averaged over its pixels and channels."""
    diff = reconstruction.float() - images.float()
    if kind == "l1":
        err = diff.abs()
    elif kind == "l2":
        err = diff.pow(2)
    else:
        raise ValueError(f"rec_loss must be 'l1' or 'l2', got {kind!r}")
    return err.flatten(1).mean(1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))`` (taming/VQGAN-LC)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN: ``0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_hat))))``."""
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: DiscLoss = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    if kind == "vanilla":
        return vanilla_d_loss(logits_real, logits_fake)
    raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {kind!r}")


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """``-mean(D(x_hat))``: the generator's adversarial term (for both hinge and vanilla D losses)."""
    return -logits_fake.float().mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Taming's adaptive GAN weight, detached: ``clamp(|grad nll| / (|grad g| + eps), 0, max_weight)``.

    Both gradients are taken with respect to ``last_layer`` (the decoder's ``conv_out.weight``) with
    ``retain_graph=True``, so the caller can still back-propagate the total loss. Multiply the result
    by the GAN weight (0.1 in VQGAN-LC) to get the factor of ``g_loss``.
    """
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads.float()) / (torch.norm(g_grads.float()) + eps)
    return torch.clamp(d_weight, 0.0, max_weight).detach()
