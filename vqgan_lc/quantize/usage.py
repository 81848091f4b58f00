"""Codebook usage over a whole split: a histogram that can be all-reduced across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .output import usage_perplexity


class CodebookUsage:
    """Accumulates a ``(codebook_size,)`` histogram of ids; ``sync()`` sums it over ranks.

    The official code counts usage on rank 0 only; summing over ranks makes the number independent
    of how many processes share the split.
    """

    def __init__(self, codebook_size: int, device: torch.device | str = "cpu") -> None:
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, ids: torch.Tensor) -> None:
        """Add ids of any shape (values in ``[0, codebook_size)``)."""
        flat = ids.reshape(-1).to(self.counts.device)
        self.counts += torch.bincount(flat, minlength=self.codebook_size)

    def add_counts(self, counts: torch.Tensor) -> None:
        self.counts += counts.to(self.counts.device)

    def sync(self) -> None:
        """Sum the histogram over all ranks of the default process group (no-op without one)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)

    @property
    def used(self) -> int:
        return int((self.counts > 0).sum())

    @property
    def utilization(self) -> float:
        """Distinct ids used / codebook size, in [0, 1]."""
        return self.used / self.codebook_size

    @property
    def perplexity(self) -> float:
        return float(usage_perplexity(self.counts))
