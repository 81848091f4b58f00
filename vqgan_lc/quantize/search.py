"""Nearest-code search: the hot path of every VQ tokenizer with a large codebook.

``nearest_code`` never materialises the ``N x K`` distance matrix: queries and codes are visited
in tiles small enough to stay in cache, each tile's distances are reduced to a running
(min, argmin), and only ``O(N + K)`` memory is kept. Ties go to the lowest code index, as
``torch.argmin`` over the full matrix would.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, get_args

import torch

from ..errors import ConfigError

try:  # the optional fused C kernel (built by setup.py where a C compiler exists)
    from . import _search as _ext  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised on installs without a compiler
    _ext = None

SearchKernel = Literal["auto", "avx2", "scalar"]
"""Which path of the C kernel runs: ``auto`` (AVX2+FMA where the CPU has it), or one forced."""

KERNEL_ENV = "VQGAN_LC_SEARCH_KERNEL"
NO_FUSED_ENV = "VQGAN_LC_NO_FUSED_SEARCH"

# The fused kernel keeps distances in registers; it pays off for low-dimensional codes (D' = 4, 8,
# 16 in VQGAN-LC). Above this, the search is a real GEMM and the blocked BLAS path wins.
_FUSED_MAX_DIM = 64

# Distances held at once by the blocked path: 4 Mi floats (16 MiB) on CPU, 128 Mi (512 MiB) on CUDA.
_CPU_TILE_ELEMS = 1 << 22
_CUDA_TILE = (8192, 16384)


def _kernel_from_env(value: str) -> SearchKernel:
    if value in ("", "auto"):
        return "auto"
    if value not in get_args(SearchKernel):
        raise ConfigError(f"{KERNEL_ENV}={value!r} is not a search kernel; set it to auto, avx2 or scalar, or unset it")
    return value  # type: ignore[return-value]


# The environment is read once, at import: VQGAN_LC_SEARCH_KERNEL picks the C kernel's path,
# VQGAN_LC_NO_FUSED_SEARCH=1 turns the C kernel off (the PyTorch blocked search runs instead).
_ENV_KERNEL = os.environ.get(KERNEL_ENV, "").strip().lower()
_FUSED_ENABLED = os.environ.get(NO_FUSED_ENV, "") in ("", "0")


class _WorkerPool:
    """A thread pool that grows to the largest number of runs asked for (queries split over threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0

    def get(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._size < size:
                # An older, smaller pool is not shut down: a concurrent caller may still be using it.
                self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="vqgan-lc-search")
                self._size = size
            return self._pool


_pool = _WorkerPool()


@torch.no_grad()
def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    codebook_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean distance) for every query row.

    Args:
        z: ``(N, D)`` queries, any float dtype (computed in float32).
        codebook: ``(K, D)`` codes on the same device.
        codebook_sq_norms: optional precomputed ``(K,)`` squared row norms of ``codebook``.

    Returns:
        ``(N,)`` int64 ids in ``[0, K)``; ties break to the lowest index.

    Runs without autograd; the ``N x K`` distance matrix is never materialised. On CPU with
    ``D <= 64`` a fused C kernel keeps distances in registers; otherwise queries (and, on CUDA, codes)
    are visited in tiles of ``||c||^2 - 2 z.c`` (``||z||^2`` is constant per query and does not move
    the argmin), reduced to a running (min, argmin).
    """
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected z (N, D) and codebook (K, D); got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if z.device != codebook.device:
        raise ValueError(f"z is on {z.device} but the codebook is on {codebook.device}")
    if codebook.shape[0] == 0:
        raise ValueError("the codebook is empty")
    z = z.detach().float()
    c = codebook.detach().float()
    if codebook_sq_norms is None:
        codebook_sq_norms = c.pow(2).sum(1)
    codebook_sq_norms = codebook_sq_norms.detach().float()
    if z.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=z.device)
    if _use_fused(z, c.shape[0]):
        return _fused_search(z, c, codebook_sq_norms)
    if z.device.type == "cpu":
        return _blocked_search_cpu(z, c, codebook_sq_norms)
    return _blocked_search(z, c, codebook_sq_norms, *_CUDA_TILE)


def _blocked_search_cpu(z: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    # Whole codebook per query block: one argmin per row, no merging. numpy's SIMD argmin is about
    # ten times faster than torch's on CPU, and both return the first index among equal minima.
    n, k = z.shape[0], c.shape[0]
    qb = max(1, _CPU_TILE_ELEMS // k)
    buf = torch.empty(min(qb, n), k)
    ids = torch.empty(n, dtype=torch.long)
    ct = c.t()
    for qs in range(0, n, qb):
        zq = z[qs : qs + qb]
        d = torch.addmm(c_sq, zq, ct, beta=1.0, alpha=-2.0, out=buf[: zq.shape[0]])
        ids[qs : qs + zq.shape[0]] = torch.from_numpy(d.numpy().argmin(axis=1))
    return ids


def _blocked_search(z: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor, qb: int, cb: int) -> torch.Tensor:
    n, k = z.shape[0], c.shape[0]
    ids = torch.empty(n, dtype=torch.long, device=z.device)
    ct = c.t()
    for qs in range(0, n, qb):
        zq = z[qs : qs + qb]
        best_v = best_i = None
        for cs in range(0, k, cb):
            d = torch.addmm(c_sq[cs : cs + cb], zq, ct[:, cs : cs + cb], beta=1.0, alpha=-2.0)
            v, i = d.min(dim=1)
            if best_v is None:
                best_v, best_i = v, i
            else:
                # Strictly smaller only: an equal distance in a later tile keeps the lower index.
                better = v < best_v
                best_v = torch.where(better, v, best_v)
                best_i = torch.where(better, i + cs, best_i)  # type: ignore[arg-type]
        ids[qs : qs + zq.shape[0]] = best_i  # type: ignore[assignment]
    return ids


def _use_fused(z: torch.Tensor, k: int) -> bool:
    return _ext is not None and _FUSED_ENABLED and z.device.type == "cpu" and z.shape[1] <= _FUSED_MAX_DIM and k < 2**31


def fused_search_available() -> bool:
    """Whether the fused C kernel is built (CPU, low-dimensional codes use it)."""
    return _ext is not None


def search_kernel() -> SearchKernel:
    """The C kernel's path chosen by ``VQGAN_LC_SEARCH_KERNEL`` (read once, at import; default ``auto``)."""
    return _kernel_from_env(_ENV_KERNEL)


def _fused_search(
    z: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor, *, kernel: SearchKernel | None = None, threads: int | None = None
) -> torch.Tensor:
    """The C kernel over ``threads`` (default ``torch.get_num_threads()``) runs of queries."""
    n, _ = z.shape
    z = z.float().contiguous()
    ct = (-2.0 * c.float()).t().contiguous()  # the kernel reads codes as -2 c^T: consecutive codes per vector
    c_sq = c_sq.float().contiguous()
    ids = torch.empty(n, dtype=torch.long)
    kernel = search_kernel() if kernel is None else kernel
    workers = max(1, torch.get_num_threads() if threads is None else threads)
    # Each worker gets a contiguous run of queries; a run of at least 64 keeps thread overhead small.
    step = max(64, -(-n // workers))
    zn, ctn, sqn, idn = z.numpy(), ct.numpy(), c_sq.numpy(), ids.numpy()  # views: no copies

    def work(s: int) -> None:
        e = min(s + step, n)
        _ext.nearest_l2(zn[s:e], ctn, sqn, idn[s:e], kernel)

    starts = list(range(0, n, step))
    if len(starts) <= 1:
        for s in starts:
            work(s)
        return ids
    pool = _pool.get(len(starts))
    for f in [pool.submit(work, s) for s in starts]:
        f.result()
    return ids


def full_matrix_nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The official formula, ``argmin(||z||^2 + ||c||^2 - 2 z c^T)`` over the whole ``N x K`` matrix.

    Kept as the reference for tests and benchmarks; it needs ``4 N K`` bytes.
    """
    with torch.no_grad():
        d = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()
        return d.argmin(dim=1)
