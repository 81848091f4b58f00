"""The VQGAN-LC quantizer: a frozen N x 768 codebook and one trainable linear projector.

``LCQuantizer`` trains; ``ProjectedCodebookQuantizer`` is its inference export, holding only the
projected ``(N, D')`` codes (3.2 MB instead of 307 MB at N = 100k) and giving the same ids and
code vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Distance
from ..errors import CodebookError
from .base import CodebookQuantizer


class LCQuantizer(CodebookQuantizer):
    """Frozen codebook ``C`` (a buffer, never optimised) projected by ``P = Linear(codebook_dim -> D')``.

    The search table is ``P(C)``: computed once per forward in training (the projector changes every
    step) and cached in eval mode until the projector or codebook changes. ``embed(ids)`` projects
    only the chosen rows, ``P(C[ids])``: the codebook loss reaches only those rows, so the backward
    costs ``n_tokens x codebook_dim x D'`` instead of ``N x codebook_dim x D'`` (at N = 100k, reading
    the 307 MB codebook a second time every step), with the same gradients. Without autograd it reads
    the table rows instead, so decoding equals the inference export bit for bit.
    Initialisation follows the official code: ``P.weight ~ N(0, D'^-1/2)``, default bias.
    """

    codebook: torch.Tensor  # a registered buffer

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
    ) -> None:
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        self.codebook_dim = codebook_dim
        self.register_buffer("codebook", torch.zeros(codebook_size, codebook_dim))
        self.projection = nn.Linear(codebook_dim, embed_dim)
        nn.init.normal_(self.projection.weight, std=embed_dim**-0.5)

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Copy ``(N, codebook_dim)`` k-means centres into the frozen buffer."""
        if tuple(vectors.shape) != tuple(self.codebook.shape):
            raise CodebookError(
                f"codebook shape {tuple(vectors.shape)} != expected {tuple(self.codebook.shape)}; "
                "build the model from the codebook (VQGANLC.from_config(config, codebook=...))"
            )
        self.codebook.copy_(vectors)

    def search_table(self) -> torch.Tensor:
        p = self.projection
        return self._cached_table((p.weight, p.bias, self.codebook), lambda: p(self.codebook))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.projection.weight.requires_grad:
            return self._normalise(self.projection(self.codebook[ids]))
        return self.search_table()[ids]

    @torch.no_grad()
    def projected_codebook(self) -> torch.Tensor:
        """The ``(N, D')`` codes ``P(C)`` (before any cosine normalisation): the inference export."""
        with torch.autocast(device_type=self.codebook.device.type, enabled=False):
            return self.projection(self.codebook).float()


class ProjectedCodebookQuantizer(CodebookQuantizer):
    """The inference form of ``LCQuantizer``: one ``(N, D')`` buffer ``projected`` = ``P(C)``.

    It searches and decodes exactly as the ``LCQuantizer`` it was exported from (same table, same
    ids, same vectors) but has nothing to train.
    """

    projected: torch.Tensor  # a registered buffer

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
        self.register_buffer("projected", torch.zeros(codebook_size, embed_dim))

    def search_table(self) -> torch.Tensor:
        return self._cached_table((self.projected,), lambda: self.projected)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.search_table()[ids]

    @torch.no_grad()
    def projected_codebook(self) -> torch.Tensor:
        """The ``(N, D')`` codes (before any cosine normalisation)."""
        return self.projected.detach().clone()
