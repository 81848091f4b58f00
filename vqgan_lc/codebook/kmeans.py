"""k-means on faiss: global (K centres from a capped subsample) and per class (k centres per class).

faiss runs Lloyd iterations with BLAS distance tiles (or on the GPU when ``faiss-gpu`` and CUDA are
present). Empty clusters: after every iteration faiss splits the largest clusters into the empty
ones (``Clustering::split_clusters``, counted in ``KMeansResult.splits``), placing two perturbed
copies of one centre; when points are duplicated one copy can stay empty. With ``reseed_empty``
(default) faiss runs ``niter - 1`` iterations and the last Lloyd iteration is ours: one assignment
(the same faiss search), centres recomputed as means, and every centre left empty
re-seeded with a distinct data point, the ones farthest from their centres. The number of searches,
hence the cost, is the same as faiss's alone; ``KMeansResult.sizes`` are the final cluster sizes.

Initialisation: faiss samples ``k`` random points, which leaves Lloyd's iterations in a local
minimum whenever two starting points fall into one true cluster. ``init="k-means++"`` (Arthur &
Vassilvitskii) spreads the start; it draws the seeds from a subsample of ``m = min(n, 32 k)`` points
with ``k`` sequential passes over it, so ``"auto"`` uses it only while ``m * k * d <=
KMEANS_PP_BUDGET`` (per-class jobs such as the paper's 20k x 100 x 768, small global codebooks) and
faiss's random sample otherwise (global 16k-100k codebooks, where it would cost more than the run).

Determinism: the subsample and faiss's initialisation come from ``seed``; with the same seed, data,
thread count and BLAS the centres are identical. In per-class mode each class's seed is derived
from ``seed`` and the class *name* (crc32), and classes are visited in sorted-name order, so the row
order and values never depend on a directory listing.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from ..errors import CodebookError, InsufficientMemoryError
from ..progress import progress_iter

log = logging.getLogger(__name__)

SmallClassPolicy = Literal["error", "take-all"]
GpuChoice = bool | Literal["auto"]
InitMethod = Literal["auto", "random", "k-means++"]

DEFAULT_NITER = 20
DEFAULT_MAX_POINTS_PER_CENTROID = 256  # faiss's default; DiGIT relies on it
# k-means++ draws its k seeds from a subsample of at most this many points per centre (the seeding
# only needs to spread the start; Lloyd's iterations then use every point).
KMEANS_PP_POINTS_PER_CENTROID = 32
# init="auto" uses k-means++ while its k sequential passes over that subsample cost at most this many
# multiply-adds (m * k * d with m = min(n, 32 k)), else faiss's random sample.
KMEANS_PP_BUDGET = 4e9


@dataclass
class KMeansResult:
    """Centres ``(K, d)`` float32 and statistics of one k-means run.

    ``splits`` counts faiss's re-seeds of empty clusters, ``reseeded`` the empty centres re-seeded by
    our last iteration, ``sizes`` the cluster sizes of its assignment (``None`` without ``reseed_empty``);
    ``objective`` is the sum of squared distances of the last assignment.
    """

    centroids: np.ndarray
    n_points: int
    niter: int
    seed: int
    init: str = "random"
    objective: float | None = None
    splits: int = 0
    reseeded: int = 0
    sizes: np.ndarray | None = None
    device: str = "cpu"
    seconds: float = 0.0


@dataclass
class PerClassResult:
    """Per-class k-means: ``centroids`` ``(sum of k_c, d)`` in ``class_order`` (sorted names);
    ``counts[c]`` centres of class c (``k`` unless a small class was taken whole)."""

    centroids: np.ndarray
    class_order: list[str]
    counts: list[int]
    points: list[int] = field(default_factory=list)
    reseeded: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------- resources
def import_faiss() -> ModuleType:
    """``import faiss`` without its loader's INFO lines ("Could not load library with AVX2 support due to:
    ModuleNotFoundError ..." on every machine without the AVX2 build): the ``faiss.loader`` logger is set to
    WARNING unless the user gave it a level. Raises ``ImportError`` when faiss is not installed."""
    loader = logging.getLogger("faiss.loader")
    if loader.level == logging.NOTSET:
        loader.setLevel(logging.WARNING)
    import faiss

    return faiss


def faiss_gpu_available() -> bool:
    """True when faiss was built with GPUs, sees one, and CUDA is available to torch."""
    try:
        faiss = import_faiss()
    except ImportError:
        return False
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0 and torch.cuda.is_available())


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation (``MemAvailable`` of /proc/meminfo, or psutil), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def estimate_kmeans_bytes(n: int, d: int, k: int, *, copy_points: bool = True) -> int:
    """Bytes a faiss k-means of ``n`` points of dim ``d`` into ``k`` centres allocates (an upper estimate).

    ``n * d * 4`` for the float32 points (when they must be copied or gathered), ``n * 16`` for the
    assignment (int64 labels, float32 distances, norms), ``4 * k * d * 4`` for centres, the index copy
    and sums, the BLAS distance tiles (4096 x 1024 floats per thread) and 64 MiB of slack.
    """
    threads = os.cpu_count() or 1
    points = n * d * 4 if copy_points else 0
    return points + n * 16 + 4 * k * d * 4 + k * 16 + threads * 4096 * 1024 * 4 + (64 << 20)


def check_memory(n: int, d: int, k: int, *, copy_points: bool = True, what: str = "k-means") -> int:
    """Raise ``InsufficientMemoryError`` if ``estimate_kmeans_bytes`` exceeds 90 % of the available memory."""
    need = estimate_kmeans_bytes(n, d, k, copy_points=copy_points)
    avail = available_memory_bytes()
    if avail is None:
        log.debug("cannot read the available memory; skipping the memory check for %s", what)
        return need
    if need > 0.9 * avail:
        raise InsufficientMemoryError(
            f"{what} of {n:,} points x {d} dims into {k:,} centres needs about {need / 2**30:.1f} GiB but only "
            f"{avail / 2**30:.1f} GiB is available; lower --max-points-per-centroid, use --per-class, "
            "or run on a machine with more memory"
        )
    log.debug("%s needs about %.2f GiB of %.2f GiB available", what, need / 2**30, avail / 2**30)
    return need


# ----------------------------------------------------------------------------------------- global
def kmeans(
    x: np.ndarray | torch.Tensor,
    k: int,
    *,
    niter: int = DEFAULT_NITER,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
    gpu: GpuChoice = "auto",
    init: InitMethod = "auto",
    reseed_empty: bool = True,
    memory_check: bool = True,
    verbose: bool = False,
) -> KMeansResult:
    """k-means of ``x`` ``(N, d)`` into ``k`` centres with faiss; returns ``(k, d)`` float32 centres.

    At most ``k * max_points_per_centroid`` points are used: a seeded uniform subsample without
    replacement (in index order) when ``N`` is larger, taken before any float32 copy so that a float16
    memmap is never converted whole. ``gpu="auto"`` uses the GPU when ``faiss_gpu_available()``.
    ``init``: ``"random"`` (faiss: k random points), ``"k-means++"`` (seeds drawn from ``m = min(n, 32 k)``
    points), or ``"auto"`` (k-means++ while ``m * k * d <= KMEANS_PP_BUDGET``).

    Raises:
        CodebookError: fewer points than centres, or non-finite input.
        InsufficientMemoryError: the job is estimated not to fit (``memory_check``).
    """
    faiss = import_faiss()

    t0 = time.perf_counter()
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if x.ndim != 2:
        raise CodebookError(f"k-means expects (N, d) vectors, got shape {x.shape}")
    n_all, d = x.shape
    if k < 1 or niter < 1:
        raise CodebookError(f"the number of centres and of iterations must be positive, got k={k}, niter={niter}")
    if n_all < k:
        raise CodebookError(f"cannot make {k:,} centres from {n_all:,} vectors; use more images or a smaller --k")
    cap = k * max_points_per_centroid
    n = min(n_all, cap)
    needs_copy = n < n_all or x.dtype != np.float32 or not x.flags.c_contiguous
    if memory_check:
        check_memory(n, d, k, copy_points=needs_copy)
    if n < n_all:
        idx = np.sort(np.random.default_rng(seed).choice(n_all, size=n, replace=False))
        log.info("k-means: subsampled %d of %d points (%d per centre)", n, n_all, max_points_per_centroid)
        pts = np.ascontiguousarray(x[idx], dtype=np.float32)
    else:
        pts = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(pts).all():
        raise CodebookError("k-means input contains NaN or infinite values")
    use_gpu = faiss_gpu_available() if gpu == "auto" else bool(gpu)
    if use_gpu and not faiss_gpu_available():
        raise CodebookError("gpu=True but faiss has no GPU support or CUDA is unavailable; install faiss-gpu")
    if n < 39 * k:
        log.debug("k-means: %d points for %d centres (faiss suggests >= 39 per centre)", n, k)
    if init not in ("auto", "random", "k-means++"):
        raise ValueError(f"init must be 'auto', 'random' or 'k-means++', got {init!r}")
    m = min(n, KMEANS_PP_POINTS_PER_CENTROID * k)
    if init == "auto":
        init = "k-means++" if m * k * d <= KMEANS_PP_BUDGET else "random"
    if init == "k-means++":
        sub = pts if m == n else pts[np.sort(np.random.default_rng(seed + 1).choice(n, size=m, replace=False))]
        start = kmeans_plus_plus(sub, k, seed=seed)
    else:  # faiss's own init, done here so that a one-iteration run needs no faiss.Kmeans
        start = pts[np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))]
    faiss_iters = niter - 1 if reseed_empty else niter
    splits, obj = 0, None
    if faiss_iters > 0:
        km = faiss.Kmeans(
            d, k, niter=faiss_iters, seed=int(seed), max_points_per_centroid=max(max_points_per_centroid, -(-n // k)),
            gpu=use_gpu, verbose=verbose, spherical=False,
        )
        obj = float(km.train(pts, init_centroids=start))
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        splits = int(sum(s["nsplit"] for s in km.iteration_stats))
        index = km.index
    else:
        centroids = np.ascontiguousarray(start, dtype=np.float32)
        index = faiss.IndexFlatL2(d)
        if use_gpu:  # pragma: no cover - needs faiss-gpu
            index = faiss.index_cpu_to_all_gpus(index)
    reseeded, sizes = 0, None
    if reseed_empty:
        centroids, reseeded, sizes, obj = _last_iteration(pts, centroids, index)
    res = KMeansResult(
        centroids=centroids, n_points=n, niter=niter, seed=int(seed), init=init, objective=obj, splits=splits,
        reseeded=reseeded, sizes=sizes, device="gpu" if use_gpu else "cpu", seconds=time.perf_counter() - t0,
    )
    log.debug("k-means %d x %d -> %d in %.1fs (splits %d, re-seeded %d)", n, d, k, res.seconds, splits, reseeded)
    return res


@torch.no_grad()
def kmeans_plus_plus(x: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """k-means++ seeding: ``k`` rows of ``x`` ``(n, d)`` float32, each drawn with probability proportional
    to its squared distance to the nearest row drawn before. ``(k, d)`` float32; seeded, deterministic."""
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = xt.shape[0]
    x_sq = xt.pow(2).sum(1)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = (x_sq - 2 * (xt @ xt[chosen[0]]) + x_sq[chosen[0]]).clamp_min_(0)
    for i in range(1, k):
        cum = np.cumsum(d2.double().numpy())
        total = cum[-1]
        if total > 0:
            j = int(np.searchsorted(cum, rng.random() * total, side="right"))
            chosen[i] = min(j, n - 1)
        else:  # every point coincides with a chosen one: fewer distinct points than k
            free = np.setdiff1d(np.arange(n), chosen[:i])
            chosen[i] = free[rng.integers(len(free))] if len(free) else rng.integers(n)
        c = chosen[i]
        torch.minimum(d2, (x_sq - 2 * (xt @ xt[c]) + x_sq[c]).clamp_min_(0), out=d2)
    return xt[torch.from_numpy(chosen)].numpy().copy()


def _cluster_sums(pts: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(k, d)`` float32 sums of the points of each cluster (float32 accumulation, as faiss's own)."""
    try:  # a sparse one-hot product is 3-5x faster than torch's index_add_ on CPU
        import scipy.sparse as sp

        n = len(labels)
        onehot = sp.csr_matrix((np.ones(n, np.float32), (labels, np.arange(n))), shape=(k, n))
        return np.asarray(onehot @ pts, dtype=np.float32)
    except ImportError:  # pragma: no cover - scipy is optional
        return torch.zeros(k, pts.shape[1]).index_add_(0, torch.from_numpy(labels), torch.from_numpy(pts)).numpy()


def _last_iteration(pts: np.ndarray, centroids: np.ndarray, index: Any) -> tuple[np.ndarray, int, np.ndarray, float]:
    """One Lloyd iteration: assign, recompute means, re-seed empty centres with the farthest points."""
    index.reset()
    index.add(centroids)
    dist, labels = index.search(pts, 1)
    labels, dist = labels[:, 0], dist[:, 0]
    k, d = centroids.shape
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    new = _cluster_sums(pts, labels, k) / np.maximum(sizes, 1).astype(np.float32)[:, None]
    empty = np.nonzero(sizes == 0)[0]
    new[empty] = centroids[empty]
    if len(empty):
        far = np.argsort(-dist, kind="stable")[: len(empty)]  # distinct points, farthest first
        new[empty] = pts[far]
        log.info("k-means: re-seeded %d empty centres with the farthest points", len(empty))
        if dist[far[-1]] <= 0:
            log.warning("k-means: fewer distinct points than centres; some centres are duplicates")
    return np.ascontiguousarray(new), int(len(empty)), sizes, float(dist.sum())


# ----------------------------------------------------------------------------------------- per class
def class_seed(seed: int, name: str) -> int:
    """The seed of one class's k-means: depends on the run's seed and the class name only."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)


def kmeans_per_class(
    vectors: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    k: int,
    *,
    classes: Sequence[str] | None = None,
    niter: int = DEFAULT_NITER,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
    small_class: SmallClassPolicy = "error",
    gpu: GpuChoice = "auto",
    init: InitMethod = "auto",
    reseed_empty: bool = True,
    progress: bool = False,
) -> PerClassResult:
    """``k`` centres per class (the paper: 100 per ImageNet class), concatenated in sorted class-name order.

    Args:
        vectors: class name -> ``(n_c, d)`` vectors, or a callable loading them (then give ``classes``);
            loaded one class at a time.
        classes: class names (default: the mapping's keys); they are sorted before use.
        small_class: a class with fewer than ``k`` vectors is an error (``"error"``, the default, so the
            codebook always has ``len(classes) * k`` rows) or contributes all its vectors as centres
            (``"take-all"``, with a warning).

    Returns a ``PerClassResult`` whose rows ``[sum(counts[:i]), sum(counts[:i+1]))`` belong to
    ``class_order[i]``.
    """
    if classes is None:
        if not isinstance(vectors, Mapping):
            raise TypeError("pass classes= when vectors is a loader function")
        classes = list(vectors.keys())
    order = sorted(classes)
    if len(set(order)) != len(order):
        raise CodebookError("class names must be unique")
    if not order:
        raise CodebookError("per-class k-means needs at least one class")
    load = vectors.__getitem__ if isinstance(vectors, Mapping) else vectors
    t0 = time.perf_counter()
    parts, counts, points, reseeded = [], [], [], 0
    for name in progress_iter(order, "k-means per class", enabled=progress, unit="class"):
        x = load(name)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        n = x.shape[0]
        if n < k:
            if small_class == "error":
                raise CodebookError(
                    f"class {name!r} has {n} vectors, fewer than --per-class {k}; add images, lower --per-class, "
                    "or allow small classes with --small-class take-all"
                )
            log.warning("class %r has %d vectors < k=%d: all of them become centres", name, n, k)
            parts.append(np.ascontiguousarray(x, dtype=np.float32))
            counts.append(n)
            points.append(n)
            continue
        r = kmeans(
            x, k, niter=niter, seed=class_seed(seed, name), max_points_per_centroid=max_points_per_centroid,
            gpu=gpu, init=init, reseed_empty=reseed_empty,
        )
        parts.append(r.centroids)
        counts.append(k)
        points.append(r.n_points)
        reseeded += r.reseeded
    d = parts[0].shape[1] if parts else 0
    centroids = np.concatenate(parts) if parts else np.zeros((0, d), dtype=np.float32)
    return PerClassResult(centroids=centroids, class_order=order, counts=counts, points=points,
                          reseeded=reseeded, seconds=time.perf_counter() - t0)
