"""Taming VQGAN decoder: (B, z_channels, h, w) -> (B, out_ch, h*f, w*f). No output non-linearity."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttnBlock, ResnetBlock, Upsample, normalize, swish
from .encoder import _Level, _Mid


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        z_channels: int,
        resolution: int,
        out_ch: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        # Built from the lowest resolution up, stored by level index so names match taming's `up.{i}`.
        levels: list[_Level] = [None] * n  # type: ignore[list-item]
        for i in reversed(range(n)):
            level = _Level()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels[i] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight is computed against (taming: conv_out.weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # type: ignore[operator]
        return self.conv_out(swish(self.norm_out(h)))
