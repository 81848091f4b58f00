"""Training losses of VQGAN-LC: reconstruction, LPIPS (local weights), PatchGAN and the adaptive GAN weight.

No Lightning here: ``VQGANLoss`` computes both players' losses for any training loop.
"""

from .adversarial import (
    DiscLoss,
    RecLoss,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    per_image_reconstruction_loss,
    reconstruction_loss,
    vanilla_d_loss,
)
from .discriminator import NLayerDiscriminator
from .lpips import build_lpips, default_lin_weights, vgg16_trunk_state_dict
from .objective import LossOutput, VQGANLoss
from .perceptual import PerceptualLoss

__all__ = [
    "DiscLoss",
    "LossOutput",
    "NLayerDiscriminator",
    "PerceptualLoss",
    "RecLoss",
    "VQGANLoss",
    "adaptive_weight",
    "build_lpips",
    "default_lin_weights",
    "discriminator_loss",
    "generator_loss",
    "hinge_d_loss",
    "per_image_reconstruction_loss",
    "reconstruction_loss",
    "vanilla_d_loss",
    "vgg16_trunk_state_dict",
]
