"""The VQGAN-LC quantizer: a frozen N x 768 codebook and one trainable linear projector.

``LCQuantizer`` trains; ``ProjectedCodebookQuantizer`` is its inference export, holding only the
projected ``(N, D')`` codes (3.2 MB instead of 307 MB at N = 100k) and giving the same ids and
code vectors.

The paper's ablation switches (Tables 6 and 10; the official ``--use_cblinear`` / ``--tuning_codebook``):

- ``projector="linear"`` (default, ``use_cblinear 1``): ``Linear(codebook_dim -> D')``;
- ``projector="mlp"`` (``use_cblinear 2``): ``Linear(codebook_dim -> 256)``, ReLU, ``Linear(256 -> D')``,
  PyTorch's default init, parameters ``projection.0.*`` and ``projection.2.*``;
- ``projector="none"`` (``use_cblinear 0``, D' = codebook_dim = 768): no projector; the latent alone is
  L2-normalised before the search and the losses, the codes are used raw;
- ``codebook_trainable=True`` (``tuning_codebook 1``): the k-means codebook is a trainable parameter
  (still named ``codebook``), trained by the codebook loss through the projector.

A random frozen codebook with a projector (``tuning_codebook -2``, Table 6's first row) is the default
quantizer with random rows: ``vqgan_lc.build.ModelSpec(codebook_init="random")``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Distance, Projector
from ..errors import CodebookError, ConfigError
from .base import CodebookQuantizer

MLP_HIDDEN = 256
"""Hidden width of the official MLP projector (``use_cblinear 2``: 768 -> 256 -> ReLU -> D')."""


def build_projector(kind: Projector, codebook_dim: int, embed_dim: int) -> nn.Module | None:
    """The projector of ``kind``: ``linear`` with the official N(0, D'^-1/2) weight init, ``mlp`` with
    PyTorch's default init (as the official code), ``none`` -> ``None``."""
    if kind == "linear":
        lin = nn.Linear(codebook_dim, embed_dim)
        nn.init.normal_(lin.weight, std=embed_dim**-0.5)
        return lin
    if kind == "mlp":
        return nn.Sequential(nn.Linear(codebook_dim, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, embed_dim))
    if kind == "none":
        if codebook_dim != embed_dim:
            raise ConfigError(f"projector 'none' uses the codes as they are, so embed_dim must equal codebook_dim "
                              f"({codebook_dim}), got {embed_dim}; set embed_dim to {codebook_dim}")
        return None
    raise ConfigError(f"projector must be 'linear', 'mlp' or 'none', got {kind!r}")


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

    codebook: torch.Tensor  # a registered buffer (a Parameter with codebook_trainable)

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        embed_dim: int,
        *,
        distance: Distance = "euclidean",
        commit_weight: float = 1.0,
        codebook_weight: float = 0.33,
        projector: Projector = "linear",
        codebook_trainable: bool = False,
    ) -> None:
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        self.codebook_dim = codebook_dim
        self.projector = projector
        self.codebook_trainable = codebook_trainable
        if codebook_trainable:
            self.codebook = nn.Parameter(torch.zeros(codebook_size, codebook_dim))
        else:
            self.register_buffer("codebook", torch.zeros(codebook_size, codebook_dim))
        proj = build_projector(projector, codebook_dim, embed_dim)
        if proj is not None:
            self.projection = proj
        self.latent_l2 = projector == "none"  # official 768-d mode: only the latent is normalised

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Copy ``(N, codebook_dim)`` k-means centres into the frozen buffer."""
        if tuple(vectors.shape) != tuple(self.codebook.shape):
            raise CodebookError(
                f"codebook shape {tuple(vectors.shape)} != expected {tuple(self.codebook.shape)}; "
                "build the model from the codebook (VQGANLC.from_config(config, codebook=...))"
            )
        self.codebook.copy_(vectors)

    def _project(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors if self.projector == "none" else self.projection(vectors)

    def _trainable(self) -> list[torch.Tensor]:
        params = [] if self.projector == "none" else list(self.projection.parameters())
        return [*params, self.codebook]

    def search_table(self) -> torch.Tensor:
        return self._cached_table(tuple(self._trainable()), lambda: self._project(self.codebook))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in self._trainable()):
            return self._normalise(self._project(self.codebook[ids]))
        return self.search_table()[ids]

    @torch.no_grad()
    def projected_codebook(self) -> torch.Tensor:
        """The ``(N, D')`` codes ``P(C)`` (before any cosine normalisation): the inference export."""
        with torch.autocast(device_type=self.codebook.device.type, enabled=False):
            return self._project(self.codebook).float().clone()


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
        latent_l2: bool = False,
    ) -> None:
        super().__init__(
            codebook_size, embed_dim, distance=distance, commit_weight=commit_weight, codebook_weight=codebook_weight
        )
        self.register_buffer("projected", torch.zeros(codebook_size, embed_dim))
        self.latent_l2 = latent_l2  # the export of a projector-free (768-d) model keeps its latent normalisation

    def search_table(self) -> torch.Tensor:
        return self._cached_table((self.projected,), lambda: self.projected)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.search_table()[ids]

    @torch.no_grad()
    def projected_codebook(self) -> torch.Tensor:
        """The ``(N, D')`` codes (before any cosine normalisation)."""
        return self.projected.detach().clone()
