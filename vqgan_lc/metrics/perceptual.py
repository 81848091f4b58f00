"""LPIPS as an evaluation metric (AlexNet or VGG16 trunk), every weight read from a local file.

The network is the ``lpips`` package's ``LPIPS(net=..., version="0.1")``, built with ``pnet_rand=True``
so torchvision downloads nothing; the trunk is then filled from a torchvision ImageNet state dict
(``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``, keys ``features.{i}.weight|bias``; a
``.safetensors`` with the same keys works too) and the 1x1 "lin" layers from the file the ``lpips``
wheel ships (``lpips/weights/v0.1/{alex,vgg}.pth``) or ``lin_weights``.

The network is built by ``vqgan_lc.losses.lpips.build_lpips``, the same builder as the training loss.

Input conventions (``LPIPSConvention``):

``"lpips"``     (default) the metric as its authors define it: both images in [-1, 1], the
                reconstruction clamped to [-1, 1] first.
``"official"``  what VQGAN-LC's ``eval_reconstruction.py`` computes: ``pyiqa.create_metric('lpips')``
                (AlexNet) called on [-1, 1] tensors and an *unclamped* reconstruction. pyiqa's LPIPS
                defaults to ``normalize=True`` (it expects [0, 1] and applies ``2x - 1``), so the
                network sees images in [-3, 1]. Use it only to compare with the paper's numbers.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

from ..losses.lpips import LPIPS_NETS, LPIPSNet, build_lpips

LPIPSConvention = Literal["lpips", "official"]
TRUNK_OPTIONS: dict[str, str] = {"alex": "--lpips-alex-weights", "vgg": "--lpips-vgg-weights"}


class LPIPSMetric(nn.Module):
    """LPIPS v0.1 distance per image pair: ``(B, 3, H, W)`` images in [-1, 1] -> ``(B,)`` (>= 0, lower is closer).

    Args:
        net: ``"alex"`` (the official protocol's LPIPS) or ``"vgg"``.
        trunk_weights: local torchvision ImageNet state dict of that network.
        lin_weights: local LPIPS lin-layer file; default: the one inside the ``lpips`` package.
        convention: see the module docstring; ``"lpips"`` clamps the reconstruction, ``"official"``
            reproduces VQGAN-LC's pyiqa call (no clamp, ``2x - 1`` on [-1, 1] inputs).
    """

    def __init__(
        self,
        net: LPIPSNet,
        trunk_weights: str | os.PathLike,
        lin_weights: str | os.PathLike | None = None,
        *,
        convention: LPIPSConvention = "lpips",
    ) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {LPIPS_NETS}, got {net!r}")
        if convention not in ("lpips", "official"):
            raise ValueError(f"convention must be 'lpips' or 'official', got {convention!r}")
        self.net_name = net
        self.convention = convention
        self.lpips = build_lpips(net, trunk_weights, lin_weights, trunk_option=TRUNK_OPTIONS[net])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSMetric:  # a metric: always eval (no lin dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distances between ``reference`` and ``reconstruction``, both ``(B, 3, H, W)`` around [-1, 1]."""
        if self.convention == "lpips":
            reference, reconstruction = reference.clamp(-1, 1), reconstruction.clamp(-1, 1)
            normalize = False
        else:
            normalize = True  # pyiqa's default, applied to [-1, 1] tensors as the official script does
        d = self.lpips(reference.float(), reconstruction.float(), normalize=normalize)
        return d.reshape(reference.shape[0]).double()


__all__ = [
    "LPIPSConvention",
    "LPIPSMetric",
    "LPIPSNet",
    "LPIPS_NETS",
]
