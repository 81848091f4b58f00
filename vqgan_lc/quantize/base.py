"""Shared machinery of the codebook quantizers: search without autograd, differentiable gather."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Distance
from .output import QuantizerOutput
from .search import nearest_code


class CodebookQuantizer(nn.Module):
    """Base class: subclasses provide ``codes()``, the ``(K, D')`` matrix the latents are matched to.

    ``forward(z)`` searches the nearest code of every latent vector with ``nearest_code`` (no
    autograd), gathers the chosen rows with autograd (so whatever produced ``codes()`` gets its
    gradient through the codebook loss), and passes ``z_q`` straight through to the encoder.
    """

    codebook_size: int
    embed_dim: int

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.distance = distance
        self.commit_weight = commit_weight
        self.codebook_weight = codebook_weight

    def codes(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def search_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, squared norms)`` as used by the search, normalised for the cosine distance."""
        codes = self.codes()
        if self.distance == "cosine":
            codes = F.normalize(codes, dim=1)
        return codes, codes.detach().float().pow(2).sum(1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` ids -> ``(B, D', h, w)`` code vectors (what the decoder consumes)."""
        codes, _ = self.search_codes()
        return F.embedding(ids, codes).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` of shape ``(B, D', h, w)``; the quantizer always runs in float32."""
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.float().permute(0, 2, 3, 1).reshape(-1, d)
            codes, sq_norms = self._forward_codes()
            if self.distance == "cosine":
                zf = F.normalize(zf, dim=1)
            ids = nearest_code(zf, codes, codebook_sq_norms=sq_norms)
            zq = self.gather(ids, codes)
            self._update(zf, ids)
            commit = F.mse_loss(zq.detach(), zf)
            codebook = F.mse_loss(zq, zf.detach())
            loss = self.commit_weight * commit + self.codebook_weight * codebook
            if torch.is_grad_enabled() and zf.requires_grad:
                zq = zf + (zq - zf).detach()  # straight-through estimator
            # else: the exact code vectors, so forward() reconstructs bit-for-bit like decode(encode(x))
            zq = zq.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        counts = torch.bincount(ids, minlength=self.codebook_size)
        return QuantizerOutput(
            z_q=zq, ids=ids.reshape(b, h, w), loss=loss, commit_loss=commit, codebook_loss=codebook, counts=counts
        )

    def _forward_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes the forward pass searches (subclasses may compute them without autograd)."""
        return self.search_codes()

    def gather(self, ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``(n,)`` ids -> ``(n, D')`` code vectors, differentiable with respect to the codes."""
        return F.embedding(ids, codes)

    def _update(self, zf: torch.Tensor, ids: torch.Tensor) -> None:
        """Hook for quantizers that change their codebook in the forward pass (EMA)."""
