"""Encoder and decoder of MAGE's VQGAN (the MaskGIT architecture ported to PyTorch).

Differences from the taming layout in ``blocks.py`` / ``encoder.py`` / ``decoder.py``:

* no attention anywhere (also none in the middle stage);
* the encoder halves the resolution with 2x2 average pooling (no downsampling parameters);
* the convolutions inside a residual block have no bias, and when the block changes the channel
  count its 1x1 ``nin_shortcut`` maps the *output* branch ``h`` (out -> out channels) and the block
  returns ``nin_shortcut(h) + h``: the block input is dropped (MaskGIT's Flax ``ResBlock``);
* the encoder's first conv has no bias and its last conv is 1x1; it emits the code vectors directly
  and the decoder's first conv consumes them (no quant_conv / post_quant_conv);
* the decoder runs ``num_res_blocks`` blocks per level (taming: one more), and has no final tanh.

Parameter names (``encoder.down.{i}.block.{j}.conv1``, ``decoder.up.{i}.upsample.conv``, ...) are
those of the official state dict, so the released checkpoint loads strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import normalize, swish


class MAGEResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3 (no biases).

    Same channels: returns ``x + h``. Channel change: returns ``nin_shortcut(h) + h`` with a 1x1
    ``(out, out)`` shortcut applied to the output branch.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (nn.Conv2d(out_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            return self.nin_shortcut(h) + h
        return x + h


class _Middle(nn.Module):
    """Two residual blocks at the coarsest resolution (``block_1``, ``block_2``; no attention)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = MAGEResBlock(channels, channels, dropout)
        self.block_2 = MAGEResBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _Level(nn.Module):
    """One resolution level: ``block`` (a ModuleList) and, in the decoder, ``upsample``."""

    def __init__(self, blocks: list[MAGEResBlock], upsample: nn.Module | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if upsample is not None:
            self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        return x


class MAGEUpsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv with bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MAGEEncoder(nn.Module):
    """Pixels in [0, 1] ``(B, in_channels, H, W)`` -> code-space latent ``(B, z_channels, H/f, W/f)``."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_levels = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        levels = []
        block_in = ch
        for mult in ch_mult:
            block_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(MAGEResBlock(block_in, block_out, dropout))
                block_in = block_out
            levels.append(_Level(blocks))
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(block_in, dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != self.num_levels - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class MAGEDecoder(nn.Module):
    """Code-space latent ``(B, z_channels, h, w)`` -> pixels ``(B, out_ch, h*f, w*f)`` meant as [0, 1] (not clamped).

    ``up[i]`` is resolution level ``i``: ``up[-1]`` runs first, ``up[0]`` (the finest) has no upsample.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 out_ch: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(MAGEResBlock(block_in, block_out, dropout))
                block_in = block_out
            levels.insert(0, _Level(blocks, MAGEUpsample(block_in) if i != 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            h = level(h)
            if i != 0:
                h = level.upsample(h)  # type: ignore[operator]
        return self.conv_out(swish(self.norm_out(h)))


__all__ = ["MAGEDecoder", "MAGEEncoder", "MAGEResBlock", "MAGEUpsample"]
