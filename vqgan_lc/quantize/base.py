"""The codebook quantizer in two hooks: ``search_table()`` (what the search matches) and ``embed(ids)``.

Every quantizer is the same three steps: find the nearest code of each latent vector (no autograd),
take those codes' vectors (with autograd, so the codebook or projector learns from the codebook
loss), pass them straight through to the encoder. A subclass says only what its codes are:

- ``search_table()``: the ``(K, D')`` float32 matrix the search runs on, without autograd,
  L2-normalised for the cosine distance, and reused in eval mode until the weights behind it change;
- ``embed(ids)``: the ``(n, D')`` vectors of ``ids``, differentiable with respect to the trainable
  weights, equal to ``search_table()[ids]`` up to float32 rounding (exactly equal without autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Distance
from .output import QuantizerOutput
from .search import nearest_code


class TableCache:
    """One cached search table, reused while the tensors it was computed from are unchanged.

    The key is each source tensor's storage address and in-place version counter (``Tensor._version``,
    bumped by every in-place write, optimizer steps and ``load_state_dict`` included).
    """

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._table: torch.Tensor | None = None

    def get(self, sources: tuple[torch.Tensor, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = tuple(v for t in sources for v in (t.data_ptr(), t._version))
        if self._table is None or key != self._key:
            self._table, self._key = compute(), key
        return self._table

    def clear(self) -> None:
        self._key = self._table = None


class CodebookQuantizer(nn.Module):
    """Base class: ``search`` (ids only) and ``forward`` (ids, straight-through ``z_q``, losses, counts).

    Subclasses implement ``search_table()`` and ``embed(ids)`` (see the module docstring). The
    quantizer always computes in float32 with autocast off.
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
        self.latent_l2 = False  # L2-normalise the latent only (the official projector-free 768-d mode)
        self._table_cache = TableCache()

    # ------------------------------------------------------------------ the two hooks
    def search_table(self) -> torch.Tensor:  # pragma: no cover - abstract
        """``(K, D')`` float32 codes the search matches, no autograd, normalised for cosine."""
        raise NotImplementedError

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(n,)`` ids -> ``(n, D')`` code vectors, differentiable w.r.t. the trainable weights."""
        raise NotImplementedError

    # ------------------------------------------------------------------ built on them
    def _cached_table(self, sources: tuple[torch.Tensor, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` under no_grad, normalised for cosine; reused in eval while ``sources`` are unchanged."""

        def table() -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device_type=sources[0].device.type, enabled=False):
                return self._normalise(compute().detach().float())

        if self.training:
            return table()
        return self._table_cache.get(sources, table)

    def _normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=1) if self.distance == "cosine" else vectors

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D', h, w)`` -> ``(B h w, D')`` float32, normalised for cosine (or with ``latent_l2``)."""
        zf = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return F.normalize(zf, dim=1) if self.latent_l2 else self._normalise(zf)

    def search(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D', h, w)`` latents -> ``(B, h, w)`` int64 ids of the nearest codes; no losses, no histogram."""
        b, _, h, w = z.shape
        with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
            return nearest_code(self._flatten(z), self.search_table()).reshape(b, h, w)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` ids -> ``(B, D', h, w)`` code vectors (what the decoder consumes)."""
        b, h, w = ids.shape
        with torch.autocast(device_type=ids.device.type, enabled=False):
            return self.embed(ids.reshape(-1)).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` of shape ``(B, D', h, w)``: search, embed, losses, straight-through, counts."""
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = self._flatten(z)
            ids = nearest_code(zf, self.search_table())
            zq = self.embed(ids)
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

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module signature
        self._table_cache.clear()  # device or dtype moves invalidate the cached table
        return super()._apply(fn, recurse)
