"""faiss k-means: blob recovery, seeding, per-class order, empty clusters, memory checks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

pytest.importorskip("faiss")

from vqgan_lc.codebook import InsufficientMemoryError, estimate_kmeans_bytes, kmeans, kmeans_per_class

# the package exports the function ``kmeans``, which shadows the submodule's attribute name
kmeans_module = importlib.import_module("vqgan_lc.codebook.kmeans")
from vqgan_lc.errors import CodebookError  # noqa: E402


def blobs(n_centres: int, per: int, d: int, seed: int, spread: float = 20.0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (synthetic noise is fine here: this checks the clustering, not images)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d)).astype(np.float32) * spread
    x = (np.repeat(centres, per, axis=0) + rng.standard_normal((n_centres * per, d)) * noise).astype(np.float32)
    return centres, x[rng.permutation(len(x))]


def test_recovers_well_separated_blobs() -> None:
    centres, x = blobs(6, 300, 16, seed=1)
    res = kmeans(x, 6, niter=30, seed=0, max_points_per_centroid=1000)
    assert res.centroids.shape == (6, 16) and res.centroids.dtype == np.float32
    # every true centre has exactly one recovered centre within the noise level
    d = np.linalg.norm(centres[:, None] - res.centroids[None], axis=-1)
    nearest = d.argmin(1)
    assert sorted(nearest.tolist()) == list(range(6))
    assert d.min(1).max() < 0.2  # the mean of 300 points with noise 0.5 per dim
    assert res.sizes is not None and sorted(res.sizes.tolist()) == [300] * 6
    assert res.n_points == 1800 and res.reseeded == 0 and res.init == "k-means++"


def test_kmeans_plus_plus_spreads_the_start() -> None:
    centres, x = blobs(8, 100, 8, seed=5)
    from vqgan_lc.codebook.kmeans import kmeans_plus_plus

    start = kmeans_plus_plus(x, 8, seed=0)
    # one starting point in every blob (the random start of faiss misses some with high probability)
    owner = np.linalg.norm(start[:, None] - centres[None], axis=-1).argmin(1)
    assert sorted(owner.tolist()) == list(range(8))
    assert np.array_equal(start, kmeans_plus_plus(x, 8, seed=0))


def test_same_seed_gives_identical_codebook_and_other_seed_differs() -> None:
    _, x = blobs(20, 50, 8, seed=2, spread=3.0, noise=1.0)
    a = kmeans(x, 16, niter=10, seed=7).centroids
    b = kmeans(x, 16, niter=10, seed=7).centroids
    c = kmeans(x, 16, niter=10, seed=8).centroids
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subsample_is_capped_by_max_points_per_centroid() -> None:
    _, x = blobs(4, 500, 8, seed=3)
    res = kmeans(x, 4, niter=5, seed=0, max_points_per_centroid=50)
    assert res.n_points == 200
    # a float16 input (as stored) gives float32 centres
    res16 = kmeans(x.astype(np.float16), 4, niter=5, seed=0, max_points_per_centroid=50)
    assert res16.centroids.dtype == np.float32 and res16.n_points == 200


def test_empty_clusters_are_reseeded() -> None:
    # 2000 copies of one point and 30 distinct far points: the random init picks many copies of the same
    # point, whose clusters are empty (ties go to the lowest index). faiss splits large clusters into
    # them; our final pass re-seeds whatever is still empty.
    rng = np.random.default_rng(0)
    far = (rng.standard_normal((30, 4)) * 10 + 50).astype(np.float32)
    x = np.concatenate([np.zeros((2000, 4), np.float32), far])
    res = kmeans(x, 12, niter=10, seed=0, init="random")
    assert res.splits + res.reseeded > 0
    assert res.sizes is not None and res.sizes.sum() == len(x)
    # after re-seeding no centre is a duplicate and each is a data point or a cluster mean
    assert len(np.unique(res.centroids, axis=0)) == 12
    import torch

    from vqgan_lc.quantize.search import nearest_code

    ids = nearest_code(torch.from_numpy(x), torch.from_numpy(res.centroids)).numpy()
    assert len(np.unique(ids)) == 12  # no empty cluster


def test_per_class_row_order_is_sorted_by_name_and_independent_of_listing_order() -> None:
    rng = np.random.default_rng(4)
    data = {name: (rng.standard_normal((400, 8)) + off).astype(np.float32)
            for name, off in (("zebra", 30.0), ("apple", -30.0), ("mango", 0.0))}
    forward = kmeans_per_class(data, 5, niter=10, seed=3)
    backward = kmeans_per_class(dict(reversed(list(data.items()))), 5, niter=10, seed=3)
    assert forward.class_order == ["apple", "mango", "zebra"] == backward.class_order
    assert np.array_equal(forward.centroids, backward.centroids)
    assert forward.centroids.shape == (15, 8) and forward.counts == [5, 5, 5]
    # rows [5i, 5i+5) are centres of class i in sorted order
    means = forward.centroids.reshape(3, 5, 8).mean(axis=(1, 2))
    assert means[0] < -25 and abs(means[1]) < 5 and means[2] > 25
    # a class's centres do not depend on which other classes exist (seed = f(seed, name))
    alone = kmeans_per_class({"mango": data["mango"]}, 5, niter=10, seed=3)
    assert np.array_equal(alone.centroids, forward.centroids[5:10])


def test_per_class_with_a_loader_function() -> None:
    rng = np.random.default_rng(5)
    arrays = {c: rng.standard_normal((50, 4)).astype(np.float32) for c in "ba"}
    calls: list[str] = []

    def load(name: str) -> np.ndarray:
        calls.append(name)
        return arrays[name]

    res = kmeans_per_class(load, 3, classes=["b", "a"], niter=5)
    assert calls == ["a", "b"] and res.centroids.shape == (6, 4)


def test_small_class_policy() -> None:
    rng = np.random.default_rng(6)
    data = {"big": rng.standard_normal((100, 4)).astype(np.float32), "tiny": rng.standard_normal((3, 4)).astype(np.float32)}
    with pytest.raises(CodebookError, match="--per-class"):
        kmeans_per_class(data, 5, niter=5)
    res = kmeans_per_class(data, 5, niter=5, small_class="take-all")
    assert res.counts == [5, 3] and res.centroids.shape == (8, 4)
    assert np.array_equal(res.centroids[5:], data["tiny"])


def test_too_few_points_is_a_clear_error() -> None:
    with pytest.raises(CodebookError, match="cannot make 10 centres from 5 vectors"):
        kmeans(np.zeros((5, 3), np.float32), 10)


def test_memory_estimate_and_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    small = estimate_kmeans_bytes(10_000, 64, 100)
    big = estimate_kmeans_bytes(25_600_000, 768, 100_000)
    assert big > 25_600_000 * 768 * 4 > small  # the paper-sized global job needs > 78 GB
    monkeypatch.setattr(kmeans_module, "available_memory_bytes", lambda: 64 << 20)
    with pytest.raises(InsufficientMemoryError, match="max-points-per-centroid"):
        kmeans(np.zeros((100_000, 64), np.float32), 1000, niter=1)
    # unknown available memory: no refusal
    monkeypatch.setattr(kmeans_module, "available_memory_bytes", lambda: None)
    _, x = blobs(2, 20, 4, seed=0)
    assert kmeans(x, 2, niter=2).centroids.shape == (2, 4)


def test_gpu_true_without_gpu_is_a_clear_error() -> None:
    if kmeans_module.faiss_gpu_available():
        pytest.skip("a GPU is present")
    _, x = blobs(2, 20, 4, seed=0)
    with pytest.raises(CodebookError, match="faiss-gpu"):
        kmeans(x, 2, gpu=True)


def test_without_the_last_iteration_it_is_exactly_faiss() -> None:
    import faiss

    _, x = blobs(10, 60, 8, seed=7, spread=2.0, noise=1.0)
    ours = kmeans(x, 10, niter=6, seed=2, init="random", reseed_empty=False, max_points_per_centroid=1000)
    start = x[np.sort(np.random.default_rng(2).choice(len(x), size=10, replace=False))]
    km = faiss.Kmeans(8, 10, niter=6, seed=2, max_points_per_centroid=1000)
    km.train(x, init_centroids=start)
    assert np.array_equal(ours.centroids, km.centroids)
    # with it, the same number of assignments: faiss runs niter - 1, the last one is a plain Lloyd step
    one = kmeans(x, 10, niter=1, seed=2, init="random", max_points_per_centroid=1000)
    labels = np.linalg.norm(x[:, None] - start[None], axis=-1).argmin(1)
    means = np.stack([x[labels == i].mean(0) for i in range(10)])
    assert np.allclose(one.centroids, means, atol=1e-5) and one.sizes.tolist() == np.bincount(labels).tolist()
