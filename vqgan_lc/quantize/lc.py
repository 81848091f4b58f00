"""The VQGAN-LC quantizer: a frozen N x 768 codebook and one trainable linear projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Distance
from .base import CodebookQuantizer


class LCQuantizer(CodebookQuantizer):
    """Frozen codebook ``C`` (a buffer, never optimised) projected by ``P = Linear(codebook_dim -> D')``.

    The codes are ``P(C)``: computed once per forward in training (the projector changes every
    step) and cached in eval mode until the projector's weights change. Initialisation follows the
    official code: ``P.weight ~ N(0, D'^-1/2)``, default bias.

    ``inference_only=True`` builds the export form: only the projected ``(N, D')`` codes are stored
    (3.2 MB instead of 307 MB at N = 100k); it encodes and decodes identically but cannot train.
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
        inference_only: bool = False,
    ) -> None:
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        self.codebook_dim = codebook_dim
        self.inference_only = inference_only
        if inference_only:
            self.register_buffer("projected", torch.zeros(codebook_size, embed_dim))
            self.codebook = None
            self.projection = None
        else:
            self.register_buffer("codebook", torch.zeros(codebook_size, codebook_dim))
            self.projection = nn.Linear(codebook_dim, embed_dim)
            nn.init.normal_(self.projection.weight, std=embed_dim**-0.5)
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Copy ``(N, codebook_dim)`` k-means centres into the frozen buffer."""
        if self.codebook is None:
            raise RuntimeError("an inference-only quantizer has no raw codebook")
        if tuple(vectors.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codebook shape {tuple(vectors.shape)} != expected {tuple(self.codebook.shape)}")
        self.codebook.copy_(vectors)

    def codes(self) -> torch.Tensor:
        if self.inference_only:
            return self.projected
        return self.projection(self.codebook)

    def _cache_key(self) -> tuple:
        if self.inference_only:
            return (self.projected._version, self.projected.data_ptr(), self.distance)
        w, b, c = self.projection.weight, self.projection.bias, self.codebook
        return (w._version, w.data_ptr(), b._version, b.data_ptr(), c._version, c.data_ptr(), self.distance)

    def search_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training or torch.is_grad_enabled() and not self.inference_only:
            return super().search_codes()
        # Eval without autograd: P(C) and its norms are reused until the weights change.
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                codes, sq = super().search_codes()
            self._cache = (key, codes, sq)
        return self._cache[1], self._cache[2]

    def _sparse_grad(self) -> bool:
        return torch.is_grad_enabled() and not self.inference_only and self.projection.weight.requires_grad

    def _forward_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Training: the codebook loss only reaches the chosen rows of P(C), so the search runs on P(C)
        # computed without autograd and gather() projects the chosen rows again with autograd. The
        # backward then costs n_tokens x 768 x D' instead of N x 768 x D' (N = 100k: reading the 307 MB
        # codebook a second time every step); the gradients are the same.
        if self._sparse_grad():
            with torch.no_grad():
                return CodebookQuantizer.search_codes(self)
        return self.search_codes()

    def gather(self, ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self._sparse_grad():
            rows = self.projection(self.codebook[ids])
            return F.normalize(rows, dim=1) if self.distance == "cosine" else rows
        return super().gather(ids, codes)

    @torch.no_grad()
    def projected_codebook(self) -> torch.Tensor:
        """The ``(N, D')`` codes ``P(C)`` (before any cosine normalisation)."""
        return self.codes().detach().clone()

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        self._cache = None  # device or dtype moves invalidate the cached codes
        return super()._apply(fn, recurse)
