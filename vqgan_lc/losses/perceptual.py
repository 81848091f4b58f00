"""LPIPS (VGG16) perceptual loss with every weight taken from a local file; nothing is downloaded.

The network is the ``lpips`` package's ``LPIPS(net="vgg")``, which is taming's LPIPS, built by
``vqgan_lc.losses.lpips.build_lpips`` (the same builder as the evaluation metric):

- the VGG16 trunk comes from a torchvision ImageNet state dict (``vgg16-397923af.pth``; keys
  ``features.{i}.weight`` / ``features.{i}.bias``; a features-only dict ``{i}.weight`` is accepted);
- the lin layers come from ``lpips/weights/v0.1/vgg.pth``, which the ``lpips`` wheel ships (the same
  file as taming's ``vgg.pth``), or from ``lin_weights``.

The module is frozen and by default stays in eval mode even when its parent is put in training
mode, so the loss is deterministic. ``dropout="official"`` follows the official VQGAN-LC code,
which registers LPIPS as a submodule of the model so that ``model.train()`` switches the dropout
(p = 0.5) of its lin layers on during training; the VGG trunk has no dropout either way.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError, MissingWeightsError
from .lpips import build_lpips


class PerceptualLoss(nn.Module):
    """LPIPS-VGG distance between images ``(B, 3, H, W)`` in [-1, 1]; returns ``(B,)`` (>= 0).

    Args:
        vgg_weights: local torchvision VGG16 ImageNet weights (``vgg16-397923af.pth`` or a
            ``.safetensors`` with the same keys).
        lin_weights: local LPIPS lin-layer weights; default: the file inside the ``lpips`` package.
        random_trunk: keep a randomly initialised VGG trunk instead of loading ``vgg_weights``
            (for tests only; the distance is then not perceptual).
        dropout: ``"off"`` (always eval) or ``"official"`` (the lin layers' dropout follows
            ``train()``/``eval()`` as in the official code).
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        *,
        random_trunk: bool = False,
        dropout: Literal["off", "official"] = "off",
    ) -> None:
        super().__init__()
        if dropout not in ("off", "official"):
            raise ConfigError(f"LPIPS dropout must be 'off' or 'official', got {dropout!r}")
        self.dropout = dropout
        if vgg_weights is None and not random_trunk:
            raise MissingWeightsError(
                "the LPIPS perceptual loss needs local VGG16 ImageNet weights (e.g. vgg16-397923af.pth); "
                "nothing is downloaded"
            )
        self.lpips = build_lpips("vgg", vgg_weights, lin_weights)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Eval always (``dropout="off"``), or as asked with only the lin layers' dropout switching."""
        super().train(False)
        if mode and self.dropout == "official":
            for m in self.lpips.modules():
                if isinstance(m, nn.Dropout):
                    m.train(True)
        return self

    def forward(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``(B,)`` LPIPS distances; gradients flow to both inputs."""
        return self.lpips(images.contiguous(), reconstruction.contiguous()).reshape(images.shape[0])


__all__ = ["PerceptualLoss"]
