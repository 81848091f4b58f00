"""Baselines of the paper's comparison, with the LC quantizer's interface.

- ``VQQuantizer``: taming VQGAN, a trainable ``K x D'`` codebook, uniform(-1/K, 1/K) init.
- ``FCQuantizer``: VQGAN-FC as the official VQGAN-LC code builds it (``--tuning_codebook -1``): a
  random trainable ``N x D'`` codebook of small D' (8 in the f16 recipes), uniform(-1/N, 1/N) init,
  squared-Euclidean search (the official code normalises nothing unless D' = 768).
- ``FCCosineQuantizer`` (kind ``fc-cosine``): the factorised-codes variant of Yu et al. 2022 that
  vqgan-lc shipped as ``fc`` before: ``N(0, 1)`` init, latents and codes L2-normalised before the
  search (``distance`` must be ``cosine``). Not in the official code.
- ``EMAQuantizer``: VQGAN-EMA: codes are exponential moving averages of their assigned latents,
  cluster sizes Laplace-smoothed; only the commitment term is a loss (``codebook_weight`` must be 0).
  Initialised as the official code: uniform(-1/N, 1/N) on the ``N x D'`` codebook. The official code
  updates in *every* forward (evaluation and the discriminator step's re-forward included): the
  option ``update="every_forward"``; the default ``"training"`` updates in training forwards only.
  The package all-reduces the statistics across ranks before the update (a fix: the official code
  never does, so its codebooks drift apart per rank).

A baseline refuses a setting that contradicts it with ``ConfigError`` instead of overriding it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import Distance, EMAUpdate
from ..errors import ConfigError
from .base import CodebookQuantizer
from .output import QuantizerOutput


class VQQuantizer(CodebookQuantizer):
    """A trainable ``(K, D')`` codebook ``embedding``; the search table is the codebook itself."""

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
    ) -> None:
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        self.embedding = nn.Parameter(torch.empty(codebook_size, embed_dim).uniform_(-1 / codebook_size, 1 / codebook_size))

    def search_table(self) -> torch.Tensor:
        return self._cached_table((self.embedding,), lambda: self.embedding)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.embedding.requires_grad:
            return self._normalise(self.embedding[ids].float())
        return self.search_table()[ids]


class FCQuantizer(VQQuantizer):
    """VQGAN-FC as in the official code: a random trainable ``(N, D')`` codebook, U(+-1/N), Euclidean."""

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
    ) -> None:
        if distance != "euclidean":
            raise ConfigError(
                f"the official 'fc' quantizer searches by squared Euclidean distance, not {distance!r}; "
                "leave distance out, or use kind 'fc-cosine' for the L2-normalised variant"
            )
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )


class FCCosineQuantizer(VQQuantizer):
    """Factorised codes with L2 normalisation: ``N(0, 1)`` initial codes, searched and embedded as unit vectors."""

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        distance: Distance = "cosine",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
    ) -> None:
        if distance != "cosine":
            raise ConfigError(
                f"the 'fc-cosine' quantizer compares L2-normalised codes, so its distance is 'cosine', not {distance!r}; "
                "set distance='cosine' or leave it out"
            )
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        nn.init.normal_(self.embedding)


class EMAQuantizer(CodebookQuantizer):
    """VQGAN-EMA: the codes (a buffer) move towards the mean of their latents in training forwards."""

    embedding: torch.Tensor  # registered buffers
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        decay: float = 0.99,
        eps: float = 1e-5,
        update: EMAUpdate = "training",
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.0,
    ) -> None:
        if codebook_weight != 0.0:
            raise ConfigError(
                f"the 'ema' quantizer updates its codes by moving averages, not by a codebook loss, so its "
                f"codebook_weight is 0.0, not {codebook_weight!r}; set codebook_weight=0.0 or leave it out"
            )
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        if update not in ("training", "every_forward"):
            raise ConfigError(f"ema update must be 'training' or 'every_forward', got {update!r}")
        self.decay = decay
        self.eps = eps
        self.update = update
        # The official init (models_vq.py, tuning_codebook -1): uniform(-1/N, 1/N) on the N x D' codebook.
        init = torch.empty(codebook_size, embed_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        self.register_buffer("embedding", init.clone())
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_avg", init.clone())

    def search_table(self) -> torch.Tensor:
        return self._cached_table((self.embedding,), lambda: self.embedding)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.search_table()[ids]

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """The base forward (with the codes as they were), then the moving-average update: in training
        forwards (``update="training"``) or in every forward, eval included (``"every_forward"``, official)."""
        out = super().forward(z)
        if self.training or self.update == "every_forward":
            with torch.autocast(device_type=z.device.type, enabled=False):
                self._ema_update(self._flatten(z.detach()), out.ids.reshape(-1))
        return out

    @torch.no_grad()
    def _ema_update(self, zf: torch.Tensor, ids: torch.Tensor) -> None:
        onehot_sum = torch.zeros(self.codebook_size, device=zf.device).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float))
        embed_sum = torch.zeros_like(self.embed_avg).index_add_(0, ids, zf)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(onehot_sum)
            dist.all_reduce(embed_sum)
        self.cluster_size.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.copy_(self.embed_avg / smoothed.unsqueeze(1))
