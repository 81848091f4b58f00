"""PatchGAN discriminator of taming-transformers as VQGAN-LC configures it (``n_layers=2``, BatchNorm).

Parameter names (``main.{i}.*``) follow taming's ``NLayerDiscriminator`` so that the ``discriminator.*``
entries of an official VQGAN-LC training checkpoint load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``(B, 3, H, W)`` images in [-1, 1] -> ``(B, 1, h, w)`` real/fake logits, one per patch.

    Layers (``n_layers=2``, ``ndf=64``, the official VQGAN-LC setting; taming uses ``n_layers=3``):
    Conv4x4 s2 3->64 + LeakyReLU(0.2); Conv4x4 s2 64->128 (no bias) + BN + LeakyReLU;
    Conv4x4 s1 128->256 (no bias) + BN + LeakyReLU; Conv4x4 s1 256->1. For a 256 px input the
    output is ``(B, 1, 62, 62)``; for 64 px ``(B, 1, 14, 14)``. 663,361 parameters.

    Init as taming's ``weights_init``: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02) and
    biases 0; the biases of the first and last conv keep PyTorch's default init.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 2) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        kw, padw = 4, 1
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, kw, stride=2, padding=padw, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, kw, stride=1, padding=padw, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=padw),
        ]
        self.main = nn.Sequential(*seq)
        self.apply(_weights_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, h, w)`` logits (unbounded; hinge loss targets +-1)."""
        return self.main(images)


def _weights_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
