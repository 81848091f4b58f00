"""Codebook building, the two stages and both together.

1. ``extract_features``: images -> frozen extractor -> optional ``pool x pool`` average pooling ->
   a resumable feature store. Pooling happens *before* storing (the paper pools 16 x 16 CLIP grids to
   4 x 4 and clusters only those; storing pooled features is 16x smaller: ~6 GB instead of ~100 GB
   of float16 for ImageNet). Another pooling therefore needs another store.
2. ``codebook_from_features``: the store -> faiss k-means, global or per class -> ``Codebook``.
3. ``build_codebook``: both, writing ``codebook.safetensors`` with its provenance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..data import collate
from ..errors import CodebookError
from ..extractors import FeatureExtractor, as_extractor, pool_features
from ..progress import Progress
from ..sources import ImageSource, open_source
from .io import Codebook, save_codebook
from .kmeans import (
    DEFAULT_MAX_POINTS_PER_CENTROID,
    DEFAULT_NITER,
    GpuChoice,
    SmallClassPolicy,
    check_memory,
    import_faiss,
    kmeans,
    kmeans_per_class,
)
from .recipes import ImageView
from .store import FeatureStore, FeatureStoreWriter, ShardPlan, StoreDtype

log = logging.getLogger(__name__)

ClusterMode = Literal["global", "per-class"]


# ----------------------------------------------------------------------------------------- stage 1
def extract_features(
    images: ImageSource | str | os.PathLike,
    extractor: FeatureExtractor | nn.Module,
    out_dir: str | os.PathLike,
    *,
    file_list: str | os.PathLike | None = None,
    pool: int = 1,
    dtype: StoreDtype = "float16",
    shard_size: int = 1024,
    batch_size: int = 32,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    view: ImageView | None = None,
) -> FeatureStore:
    """Extract ``(h/pool, w/pool, d)`` features of every readable image into the store at ``out_dir``.

    ``view``: how images are shown to the extractor (default: its own center-crop preprocessing;
    ``ImageView(random_crop_flip=True, seed=...)``: the seeded random crop + flip of the ``digit-official``
    recipe, see ``vqgan_lc.codebook.recipes``); recorded in the store's options.

    ``images`` is an ``ImageSource`` or a ``--data`` value: an image folder (with ``file_list`` optional),
    ``wds:PATTERN`` or ``hf:NAME_OR_DIR[:SPLIT]`` (``vqgan_lc.sources.open_source``). Images stream
    through a ``DataLoader`` (``num_workers`` processes decode and preprocess) in batches that never
    cross a shard. Finished shards of an earlier run with the same options are verified and skipped;
    unreadable images are skipped, logged and listed in the manifest. Runs on the extractor's device.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    images = open_source(images, file_list)
    ext = as_extractor(extractor).eval()
    device = next(iter(ext.parameters()), torch.empty(0)).device
    options = {"extractor": ext.describe(), "pool": pool, "dtype": dtype, "shard_size": shard_size}
    if view is not None and not view.is_default:  # the default view adds nothing: existing stores still resume
        options["view"] = view.describe()
    store = FeatureStoreWriter.create_or_resume(out_dir, images, options, overwrite=overwrite)
    try:  # the store's lock is held until the extraction ends
        h, w = ext.image_size
        with torch.inference_mode():  # the grid and dim, known before any image is read
            probe = pool_features(ext(torch.zeros(1, 3, h, w, device=device)), pool)
        store.set_geometry((probe.shape[1], probe.shape[2]), probe.shape[3])

        pending = store.pending()
        done = store.num_shards - len(pending)
        if not pending:
            log.info("feature store %s is complete (%d shards); nothing to extract", store.root, store.num_shards)
            return FeatureStore.open(store.root)
        if done:
            log.info("resuming %s: %d of %d shards already done", store.root, done, store.num_shards)
        _run_extraction(store, images, ext, pending, device, pool=pool, batch_size=batch_size,
                        num_workers=num_workers, progress=progress, view=view or ImageView())
        result = FeatureStore.open(store.root)
        if result.skipped:
            log.warning("%d unreadable images were skipped (listed in %s/manifest.json)", len(result.skipped), store.root)
        log.info("feature store %s: %d images, grid %s, dim %d", store.root, result.num_images, result.grid, result.dim)
        return result
    finally:
        store.release()


def _batches(pending: list[ShardPlan], batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, p.stop))) for p in pending for s in range(p.start, p.stop, batch_size)]


def _run_extraction(
    store: FeatureStoreWriter,
    images: ImageSource,
    ext: FeatureExtractor,
    pending: list[ShardPlan],
    device: torch.device,
    *,
    pool: int,
    batch_size: int,
    num_workers: int,
    progress: bool,
    view: ImageView,
) -> None:
    loader = torch.utils.data.DataLoader(
        view.dataset(images, ext.preprocess),
        batch_sampler=_batches(pending, batch_size),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    total = sum(p.stop - p.start for p in pending)
    shards: Iterator[ShardPlan] = iter(pending)
    cur = next(shards)
    feats: list[np.ndarray] = []
    rows: list[int] = []
    failed: list[tuple[int, str]] = []
    seen = 0
    warned = 0
    with Progress(total, "extracting features", enabled=progress) as bar, torch.inference_mode():
        for batch in loader:
            if batch.images is not None:
                f = pool_features(ext(batch.images.to(device, non_blocking=True)), pool)
                feats.append(f.cpu().numpy())
                rows.extend(batch.indices)
            for i, reason in batch.failed:
                if warned < 10:
                    log.warning("skipping unreadable image %s (%s)", images.paths[i], reason)
                warned += 1
            failed.extend(batch.failed)
            n = len(batch.indices) + len(batch.failed)
            seen += n
            bar.update(n)
            if seen == cur.stop - cur.start:
                g, d = store.grid, store.dim
                arr = np.concatenate(feats) if feats else np.zeros((0, g[0], g[1], d), dtype=np.float32)
                store.write_shard(cur, arr, rows, failed)
                feats, rows, failed, seen = [], [], [], 0
                cur = next(shards, cur)
    if warned > 10:
        log.warning("... and %d more unreadable images", warned - 10)


# ----------------------------------------------------------------------------------------- stage 2
def codebook_from_features(
    store: FeatureStore | str | os.PathLike,
    *,
    k: int | None = None,
    per_class: int | None = None,
    niter: int = DEFAULT_NITER,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
    small_class: SmallClassPolicy = "error",
    gpu: GpuChoice = "auto",
    progress: bool = True,
) -> Codebook:
    """Cluster a complete feature store into a ``Codebook`` ``(N, d)`` float32 with provenance.

    Global mode (``k``): ``k`` centres from at most ``k * max_points_per_centroid`` vectors, a seeded
    subsample gathered from the shards (the memory need is checked before anything is read).
    Per-class mode (``per_class``): ``per_class`` centres for every class in sorted class-name order
    (the paper: 100 x 1000 ImageNet classes); ``k``, if given, must equal ``per_class * classes``.
    Images without a class are left out of per-class mode (with a warning).
    """
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    if store.num_images == 0:
        raise CodebookError(f"feature store {store.root} holds no features (every image was unreadable?)")
    mode: ClusterMode = "per-class" if per_class is not None else "global"
    prov: dict[str, Any] = _provenance_base(store)
    if "view" in store.options:  # a recipe's view and image subset (digit-official: random crop + flip, ~10%)
        prov["view"] = store.options["view"]
    prov.update(mode=mode, seed=int(seed), niter=int(niter), max_points_per_centroid=int(max_points_per_centroid))
    if mode == "per-class":
        assert per_class is not None
        classes = store.classes
        if not classes:
            raise CodebookError(
                "per-class k-means needs class labels: put the images in one sub-folder per class, or give a "
                "file list with labels (path,label)"
            )
        if k is not None and k != per_class * len(classes):
            raise CodebookError(
                f"--k {k} does not equal --per-class {per_class} x {len(classes)} classes = {per_class * len(classes)}"
            )
        unlabelled = int((store.row_labels() < 0).sum())
        if unlabelled:
            log.warning("%d images have no class and are left out of per-class k-means", unlabelled)
        index = {c: i for i, c in enumerate(classes)}
        res = kmeans_per_class(
            lambda name: store.class_vectors(index[name]), per_class, classes=classes, niter=niter, seed=seed,
            max_points_per_centroid=max_points_per_centroid, small_class=small_class, gpu=gpu, progress=progress,
        )
        centroids = res.centroids
        prov.update(k=int(centroids.shape[0]), per_class_k=int(per_class), class_order=res.class_order,
                    class_counts=res.counts, n_points=int(sum(res.points)), reseeded=res.reseeded)
    else:
        if k is None:
            raise CodebookError("give the codebook size with --k (or --per-class K for per-class k-means)")
        total = store.num_vectors
        n = min(total, k * max_points_per_centroid)
        if total < k:
            raise CodebookError(f"cannot make {k:,} centres from {total:,} feature vectors; use more images or a smaller --k")
        check_memory(n, store.dim, k, what="global k-means")
        ids = np.arange(total, dtype=np.int64)
        if n < total:
            ids = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
            log.info("global k-means on a subsample of %d of %d vectors (%d per centre)", n, total, max_points_per_centroid)
        x = store.gather_vectors(ids)
        res_g = kmeans(x, k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid, gpu=gpu,
                       memory_check=False)
        centroids = res_g.centroids
        prov.update(k=int(k), per_class_k=None, class_order=None, n_points=int(n), splits=res_g.splits,
                    reseeded=res_g.reseeded, device=res_g.device)
    return Codebook(torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)), prov)


def _provenance_base(store: FeatureStore) -> dict[str, Any]:
    try:
        faiss = import_faiss()
        faiss_version = getattr(faiss, "__version__", None)
    except ImportError:  # pragma: no cover
        faiss_version = None
    ext = store.extractor
    return {
        "builder": "vqgan-lc build-codebook",
        "vqgan_lc_version": __version__,
        "faiss_version": faiss_version,
        "extractor": ext.get("extractor"),
        "extractor_info": ext,
        "model": ext.get("model"),
        "weights": ext.get("weights"),
        "weights_sha256": ext.get("weights_sha256") or ext.get("state_dict_sha256"),
        "layer": ext.get("layer"),
        "image_size": ext.get("image_size"),
        "pooling": store.pool,
        "grid": list(store.grid),
        "dim": store.dim,
        "feature_dtype": store.options["dtype"],
        "source_hash": store.source_hash,
        "num_images": store.num_images,
        "num_skipped": len(store.skipped),
    }


# ----------------------------------------------------------------------------------------- both
def default_features_dir(out: str | os.PathLike) -> Path:
    """Where ``build_codebook`` keeps the feature store by default: ``codebook.safetensors`` -> ``codebook.features/``."""
    out = Path(out)
    return out.with_name(out.name.split(".", 1)[0] + ".features")


def build_codebook(
    data: ImageSource | str | os.PathLike,
    extractor: FeatureExtractor | nn.Module,
    out: str | os.PathLike,
    *,
    k: int | None = None,
    per_class: int | None = None,
    features_dir: str | os.PathLike | None = None,
    file_list: str | os.PathLike | None = None,
    pool: int = 1,
    dtype: StoreDtype = "float16",
    shard_size: int = 1024,
    batch_size: int = 32,
    num_workers: int = 0,
    overwrite: bool = False,
    niter: int = DEFAULT_NITER,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
    small_class: SmallClassPolicy = "error",
    gpu: GpuChoice = "auto",
    progress: bool = True,
) -> Codebook:
    """Extract features (resumable, into ``features_dir``, default ``default_features_dir(out)``), cluster
    them and write ``out`` (``codebook.safetensors``). Returns the ``Codebook`` that was written."""
    if k is None and per_class is None:
        raise CodebookError("give the codebook size with --k (or --per-class K for per-class k-means)")
    store = extract_features(
        data, extractor, features_dir or default_features_dir(out), file_list=file_list, pool=pool, dtype=dtype,
        shard_size=shard_size, batch_size=batch_size, num_workers=num_workers, overwrite=overwrite, progress=progress,
    )
    cb = codebook_from_features(
        store, k=k, per_class=per_class, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid,
        small_class=small_class, gpu=gpu, progress=progress,
    )
    save_codebook(out, cb.vectors, cb.provenance)
    log.info("wrote %s: %d x %d codebook", out, cb.size, cb.dim)
    return cb
