"""The one output type every quantizer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizerOutput:
    """Result of quantizing a latent map.

    Attributes:
        z_q: ``(B, D', h, w)`` quantized latent; straight-through, so gradients reach the encoder.
        ids: ``(B, h, w)`` int64 code ids in ``[0, codebook_size)``.
        loss: scalar, ``commit_weight * commit_loss + codebook_weight * codebook_loss``.
        commit_loss: scalar ``mse(sg(z_q), z)`` (pulls the encoder towards its code).
        codebook_loss: scalar ``mse(z_q, sg(z))`` (pulls the codes, i.e. the projector, towards z).
        counts: ``(codebook_size,)`` int64 histogram of ``ids`` in this batch.
    """

    z_q: torch.Tensor
    ids: torch.Tensor
    loss: torch.Tensor
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    counts: torch.Tensor

    @property
    def utilization(self) -> float:
        """Fraction of the codebook used at least once in this batch."""
        return float((self.counts > 0).float().mean())

    @property
    def perplexity(self) -> float:
        """``exp`` of the entropy of this batch's code histogram (1 .. codebook_size)."""
        return float(usage_perplexity(self.counts))


def usage_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(-sum p log p)`` of a histogram of code ids."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
