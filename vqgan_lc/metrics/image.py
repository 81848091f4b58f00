"""Full-reference pixel metrics, one value per image: PSNR (RGB or BT.601 luma) and SSIM.

Conventions follow the official VQGAN-LC evaluation (``eval_reconstruction.py``), which clamps the
reconstruction to [-1, 1], maps both images to [0, 1] and then calls

* ``pyiqa.create_metric('psnr', test_y_channel=True, color_space='ycbcr')`` -- PSNR on the luma (Y)
  channel: pyiqa ``psnr_arch.psnr`` computes ``10 log10(1 / (mse + 1e-8))`` per image, with Y from
  pyiqa ``color_util.rgb2ycbcr`` (ITU-R BT.601 for studio-swing YCbCr, as in basicsr/MATLAB):
  ``Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255`` for R, G, B in [0, 1], so Y is in
  [16/255, 235/255] and is not rounded (``data_range`` 1 < 255);
* ``piq.ssim(x, y, data_range=1.)`` -- SSIM on RGB with piq's defaults: 11x11 Gaussian window,
  sigma 1.5, k1 = 0.01, k2 = 0.03, valid (unpadded) filtering, mean over pixels then channels, and
  an average-pool pre-downsampling by ``max(1, round(min(H, W) / 256))`` (a no-op at 256 px).

SSIM is computed with the maintained ``torchmetrics.functional.structural_similarity_index_measure``;
its SSIM map (computed on reflect-padded images) is cropped back to the windows that lie inside the
image before averaging, which is piq's valid filtering (torchmetrics alone would also average the
padded border windows, about 5e-4 higher on 64 px images).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PSNRChannel = Literal["rgb", "y"]

# ITU-R BT.601 luma for R, G, B in [0, 1], scaled to [0, 255] before the +16 offset (pyiqa/basicsr).
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0
PSNR_EPS = 1e-8  # pyiqa's eps: identical images give 80 dB instead of inf


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 1, H, W)`` BT.601 luma Y in [16/255, 235/255]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got {tuple(x.shape)}")
    w = torch.tensor(BT601_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + BT601_Y_OFFSET) / 255.0


def psnr(
    x: torch.Tensor, y: torch.Tensor, *, channel: PSNRChannel = "rgb", data_range: float = 1.0, eps: float = PSNR_EPS
) -> torch.Tensor:
    """Per-image PSNR in dB: ``10 log10(data_range^2 / (mse + eps))``, ``(B,)`` float64.

    ``x``, ``y``: ``(B, 3, H, W)`` in ``[0, data_range]``. ``channel="y"`` compares the BT.601 luma
    (the official protocol); ``"rgb"`` averages the squared error over the three channels.
    """
    _check_pair(x, y)
    if channel not in ("rgb", "y"):
        raise ValueError(f"channel must be 'rgb' or 'y', got {channel!r}")
    x, y = x.double() / data_range, y.double() / data_range
    if channel == "y":
        x, y = rgb_to_y(x), rgb_to_y(y)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / (mse + eps))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    downsample: bool = True,
) -> torch.Tensor:
    """Per-image SSIM, ``(B,)`` float64, of ``(B, C, H, W)`` images in ``[0, data_range]`` (piq's defaults).

    ``downsample`` average-pools both images by ``max(1, round(min(H, W) / 256))`` first, as piq does.
    Images must be at least ``kernel_size`` pixels on each side (after downsampling).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, y)
    # float32: CPU convolutions have no fast float64 path (about 40x slower); SSIM stays exact to ~1e-6.
    x, y = x.float() / data_range, y.float() / data_range
    f = max(1, round(min(x.shape[-2:]) / 256))
    if downsample and f > 1:
        x, y = F.avg_pool2d(x, kernel_size=f), F.avg_pool2d(y, kernel_size=f)
    if min(x.shape[-2:]) < kernel_size:
        raise ValueError(f"SSIM needs images of at least {kernel_size}x{kernel_size} pixels, got {tuple(x.shape[-2:])}")
    # torchmetrics derives the Gaussian window size from sigma (int(3.5 sigma + 0.5) * 2 + 1 = 11 at 1.5).
    if int(3.5 * sigma + 0.5) * 2 + 1 != kernel_size:
        raise ValueError(f"kernel_size {kernel_size} does not match sigma {sigma} (torchmetrics sizes the window from sigma)")
    _, full = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=sigma, kernel_size=kernel_size, data_range=1.0, k1=k1, k2=k2,
        reduction="none", return_full_image=True,
    )
    # torchmetrics averages the map over reflect-padded borders too; piq (the official protocol) keeps
    # only the windows that lie inside the image.
    p = (kernel_size - 1) // 2
    return full[..., p:-p, p:-p].mean(dim=(1, 2, 3)).double()


def to_unit(images: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """``[-1, 1]`` images -> ``[0, 1]``; ``clamp`` first clamps to [-1, 1] as the official evaluation does."""
    if clamp:
        images = images.clamp(-1.0, 1.0)
    return (images + 1.0) / 2.0


__all__ = ["BT601_Y_WEIGHTS", "PSNRChannel", "psnr", "rgb_to_y", "ssim", "to_unit"]
