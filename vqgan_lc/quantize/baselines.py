"""Baselines of the paper's comparison, with the LC quantizer's interface.

- ``VQQuantizer``: taming VQGAN, a trainable ``K x D'`` codebook, uniform(-1/K, 1/K) init.
- ``FCQuantizer``: VQGAN-FC (factorised codes, Yu et al. 2022): low-dimensional trainable codes,
  latents and codes L2-normalised before the search.
- ``EMAQuantizer``: VQGAN-EMA: codes are exponential moving averages of their assigned latents,
  cluster sizes Laplace-smoothed; only the commitment term is a loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .base import CodebookQuantizer


class VQQuantizer(CodebookQuantizer):
    def __init__(self, codebook_size: int, embed_dim: int, **kw) -> None:  # noqa: ANN003
        super().__init__(codebook_size, embed_dim, **kw)
        self.embedding = nn.Parameter(torch.empty(codebook_size, embed_dim).uniform_(-1 / codebook_size, 1 / codebook_size))

    def codes(self) -> torch.Tensor:
        return self.embedding


class FCQuantizer(VQQuantizer):
    def __init__(self, codebook_size: int, embed_dim: int, **kw) -> None:  # noqa: ANN003
        kw["distance"] = "cosine"
        super().__init__(codebook_size, embed_dim, **kw)
        nn.init.normal_(self.embedding)


class EMAQuantizer(CodebookQuantizer):
    def __init__(self, codebook_size: int, embed_dim: int, *, decay: float = 0.99, eps: float = 1e-5, **kw) -> None:  # noqa: ANN003
        kw["codebook_weight"] = 0.0  # the codes are not trained by gradient
        super().__init__(codebook_size, embed_dim, **kw)
        self.decay = decay
        self.eps = eps
        init = torch.randn(codebook_size, embed_dim)
        self.register_buffer("embedding", init.clone())
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_avg", init.clone())

    def codes(self) -> torch.Tensor:
        return self.embedding

    @torch.no_grad()
    def _update(self, zf: torch.Tensor, ids: torch.Tensor) -> None:
        if not self.training:
            return
        onehot_sum = torch.zeros(self.codebook_size, device=zf.device).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float))
        embed_sum = torch.zeros_like(self.embed_avg).index_add_(0, ids, zf.detach())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(onehot_sum)
            dist.all_reduce(embed_sum)
        self.cluster_size.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.copy_(self.embed_avg / smoothed.unsqueeze(1))
