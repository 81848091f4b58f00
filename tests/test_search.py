"""nearest_code: exact argmin with lowest-index ties, on every code path, without an N x K matrix."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from vqgan_lc.errors import ConfigError
from vqgan_lc.quantize import search
from vqgan_lc.quantize.search import full_matrix_nearest_code, nearest_code


def brute_force(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = ((z.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)  # first minimum: lowest index


def exact_brute_force(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float64 argmin for small-integer data (every distance exact), without an (N, K, D) tensor."""
    z, c = z.double(), c.double()
    return (z.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2 * z @ c.t()).argmin(1)


def require_kernel(kernel: str = "auto") -> None:
    """Skip a test of the C kernel where it is not built, except under CI, where that fails the run."""
    if not search.fused_search_available():
        if os.environ.get("CI") == "true":
            pytest.fail("the C search kernel is not built: CI must build it (see the warning of setup.py)")
        pytest.skip("the C kernel is not built on this install")
    if kernel == "avx2" and not search._ext.has_avx2():
        pytest.skip("this CPU has no AVX2+FMA")


def fused(kernel: str, threads: int):  # noqa: ANN201 - a path of PATHS
    return lambda z, c, sq: search._fused_search(z, c, sq, kernel=kernel, threads=threads)


PATHS = {
    "auto": lambda z, c, sq: nearest_code(z, c),
    "avx2": fused("avx2", 1),
    "avx2_3threads": fused("avx2", 3),
    "scalar": fused("scalar", 1),
    "scalar_2threads": fused("scalar", 2),
    "blocked_cpu": lambda z, c, sq: search._blocked_search_cpu(z, c, sq),
    "blocked_tiles": lambda z, c, sq: search._blocked_search(z, c, sq, 7, 300),  # small tiles: every merge case
}


def _run(path: str, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    if path.startswith(("avx2", "scalar")):
        require_kernel(path.split("_")[0])
    return PATHS[path](z.float(), c.float(), c.float().pow(2).sum(1))


def test_the_kernel_is_built_under_ci() -> None:
    # Under CI=true a failed build must fail the run, not skip the kernel's tests.
    require_kernel()
    assert search.fused_search_available()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("n", "k", "d"), [(1, 1, 1), (17, 9, 3), (64, 1000, 8), (33, 1003, 4), (5, 200, 16), (40, 130, 64), (9, 50, 768)])
def test_integer_data_with_many_ties_matches_brute_force(path: str, n: int, k: int, d: int) -> None:
    # Small integers make every distance exact in float32, so ties are real and must go to the lowest id.
    g = torch.Generator().manual_seed(n * 1000 + k + d)
    z = torch.randint(-2, 3, (n, d), generator=g).float()
    c = torch.randint(-2, 3, (k, d), generator=g).float()
    assert torch.equal(_run(path, z, c), brute_force(z, c))


@pytest.mark.parametrize("path", list(PATHS))
def test_planted_duplicate_codes_resolve_to_the_lowest_index(path: str) -> None:
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3000, 8, generator=g)
    c[2500] = c[17]  # exact duplicates far apart (other lanes, chunks and tiles)
    c[2999] = c[1024]
    c[1025] = c[1024]
    z = torch.stack([c[17], c[2500], c[1024], c[2999], c[1025]]) + 0.0
    assert _run(path, z, c).tolist() == [17, 17, 1024, 1024, 1024]


@pytest.mark.parametrize("path", list(PATHS))
def test_random_gaussian_data_picks_a_true_minimum(path: str) -> None:
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(500, 8, generator=g), torch.randn(20011, 8, generator=g)
    ids = _run(path, z, c)
    dist = ((z.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    chosen = dist.gather(1, ids[:, None]).squeeze(1)
    best = dist.min(1).values
    # float32 rounding may swap near-ties; the chosen code must be within float32 error of the best.
    assert torch.all(chosen - best <= 1e-5 * (1 + best)), float((chosen - best).max())
    assert (ids == dist.argmin(1)).float().mean() > 0.999


def test_matches_the_official_full_matrix_formula() -> None:
    g = torch.Generator().manual_seed(2)
    z, c = torch.randn(300, 8, generator=g) * 3, torch.randn(5000, 8, generator=g)
    assert torch.equal(nearest_code(z, c), full_matrix_nearest_code(z, c))


def test_accepts_half_precision_and_returns_int64_without_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, 8, generator=g, requires_grad=True)
    c = torch.randn(100, 8, generator=g)
    ids = nearest_code(z.bfloat16(), c.bfloat16())
    assert ids.dtype == torch.int64 and not ids.requires_grad
    assert torch.equal(ids, brute_force(z.detach().bfloat16().float(), c.bfloat16().float()))


def test_empty_queries_and_bad_shapes() -> None:
    c = torch.randn(10, 8)
    assert nearest_code(torch.empty(0, 8), c).shape == (0,)
    with pytest.raises(ValueError, match="expected z"):
        nearest_code(torch.randn(4, 7), c)
    with pytest.raises(ValueError, match="empty"):
        nearest_code(torch.randn(4, 8), torch.empty(0, 8))


def test_blocked_cpu_path_never_holds_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Record the largest distance tile allocated; N x K would be 4000 x 5000.
    seen: list[int] = []
    real_empty = torch.empty

    def spy(*shape: Any, **kw: Any) -> torch.Tensor:
        t = real_empty(*shape, **kw)
        seen.append(t.numel())
        return t

    monkeypatch.setattr(search, "_CPU_TILE_ELEMS", 1 << 16)
    monkeypatch.setattr(search.torch, "empty", spy)
    z, c = torch.randn(4000, 32), torch.randn(5000, 32)
    ids = search._blocked_search_cpu(z, c, c.pow(2).sum(1))
    monkeypatch.undo()
    assert max(seen) <= max(1 << 16, 5000) < 4000 * 5000
    assert torch.equal(ids, full_matrix_nearest_code(z, c))


@pytest.mark.parametrize("kernel", ["avx2", "scalar"])
@pytest.mark.parametrize("threads", [1, 2, 7])
@pytest.mark.parametrize("d", [4, 5, 8, 16])
def test_kernel_paths_and_thread_counts_match_a_float64_brute_force(kernel: str, threads: int, d: int) -> None:
    # Many tiles of codes (448 codes per tile at d = 8), query runs that do not divide evenly, integer
    # data with real ties (lowest index wins), and planted duplicates at both ends of the codebook.
    require_kernel(kernel)
    g = torch.Generator().manual_seed(100 * d + threads)
    for n, k in ((1, 1), (3, 17), (65, 449), (1001, 5003)):
        z = torch.randint(-3, 4, (n, d), generator=g).float()
        c = torch.randint(-3, 4, (k, d), generator=g).float()
        c[k - 1] = c[0]
        ids = search._fused_search(z, c, c.pow(2).sum(1), kernel=kernel, threads=threads)
        assert ids.dtype == torch.int64
        assert torch.equal(ids, exact_brute_force(z, c)), (n, k)


def test_kernel_handles_threads_and_remainders() -> None:
    require_kernel()
    g = torch.Generator().manual_seed(4)
    for n in (1, 63, 64, 65, 130, 1001):
        z = torch.randint(-3, 4, (n, 8), generator=g).float()
        c = torch.randint(-3, 4, (1237, 8), generator=g).float()
        assert torch.equal(nearest_code(z, c), brute_force(z, c)), n
    assert np.dtype(np.int64) == np.dtype(nearest_code(z, c).numpy().dtype)
    assert search._fused_search(torch.empty(0, 8), c, c.pow(2).sum(1)).shape == (0,)


@pytest.mark.parametrize(("kernel", "allocation"), [("scalar", 0), ("avx2", 0), ("avx2", 1)])
def test_allocation_failure_raises_memory_error(kernel: str, allocation: int) -> None:
    # The kernel allocates the running best values (allocation 0) and, on AVX2, the packing tile (1).
    require_kernel(kernel)
    z, c = torch.randn(100, 8), torch.randn(300, 8)
    search._ext._fail_allocation(allocation)
    try:
        with pytest.raises(MemoryError):
            search._fused_search(z, c, c.pow(2).sum(1), kernel=kernel, threads=1)
    finally:
        search._ext._fail_allocation(-1)
    assert torch.equal(search._fused_search(z, c, c.pow(2).sum(1), kernel=kernel, threads=1), brute_force(z, c))


def test_kernel_checks_its_buffers() -> None:
    require_kernel()
    z, ct, sq, out = np.zeros((4, 8), np.float32), np.zeros((8, 10), np.float32), np.zeros(10, np.float32), np.zeros(4, np.int64)
    search._ext.nearest_l2(z, ct, sq, out)  # the valid call
    with pytest.raises(TypeError, match="float32"):
        search._ext.nearest_l2(z.astype(np.float64), ct, sq, out)
    with pytest.raises(TypeError, match="int64"):
        search._ext.nearest_l2(z, ct, sq, out.astype(np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        search._ext.nearest_l2(np.zeros((8, 4), np.float32).T, ct, sq, out)
    with pytest.raises(ValueError, match="writable"):
        ro = out.copy()
        ro.flags.writeable = False
        search._ext.nearest_l2(z, ct, sq, ro)
    with pytest.raises(ValueError, match="2 dimensions"):
        search._ext.nearest_l2(z.reshape(-1), ct, sq, out)
    with pytest.raises(ValueError, match="shapes do not fit"):
        search._ext.nearest_l2(z, ct, sq[:9], out)
    with pytest.raises(ValueError, match="shapes do not fit"):
        search._ext.nearest_l2(z, ct, sq, out[:3])
    with pytest.raises(ValueError, match="shapes do not fit"):
        search._ext.nearest_l2(z, ct[:7], sq, out)
    with pytest.raises(ValueError, match="kernel must be"):
        search._ext.nearest_l2(z, ct, sq, out, "fast")


def test_kernel_switch_is_read_once_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    require_kernel()
    assert search.search_kernel() == (os.environ.get("VQGAN_LC_SEARCH_KERNEL") or "auto").lower()
    seen: list[str] = []
    real = search._ext.nearest_l2

    def spy(z, ct, sq, out, kernel):  # noqa: ANN001, ANN202
        seen.append(kernel)
        return real(z, ct, sq, out, kernel)

    monkeypatch.setattr(search._ext, "nearest_l2", spy)
    monkeypatch.setattr(search, "_ENV_KERNEL", "scalar")
    monkeypatch.setenv("VQGAN_LC_SEARCH_KERNEL", "avx2")  # too late: the module read it at import
    z, c = torch.randint(-2, 3, (70, 8)).float(), torch.randint(-2, 3, (500, 8)).float()
    assert torch.equal(nearest_code(z, c), brute_force(z, c))
    assert seen and set(seen) == {"scalar"}
    monkeypatch.setattr(search, "_ENV_KERNEL", "fastest")
    with pytest.raises(ConfigError, match="VQGAN_LC_SEARCH_KERNEL='fastest'"):
        nearest_code(z, c)


def test_kernel_switch_in_a_fresh_process() -> None:
    require_kernel()
    code = (
        "import torch; from vqgan_lc.quantize import search as s; "
        "z = torch.randint(-2, 3, (300, 8)).float(); c = torch.randint(-2, 3, (2000, 8)).float(); "
        "d = (z.double().pow(2).sum(1, keepdim=True) + c.double().pow(2).sum(1) - 2 * z.double() @ c.double().t()); "
        "print(s.search_kernel(), bool(torch.equal(s.nearest_code(z, c), d.argmin(1))))"
    )
    env = {**os.environ, "VQGAN_LC_SEARCH_KERNEL": "scalar"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["scalar", "True"]


@pytest.mark.gpu
def test_cuda_blocked_path_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(5)
    z = torch.randint(-2, 3, (20000, 8), generator=g).float()
    c = torch.randint(-2, 3, (100000, 8), generator=g).float()
    assert torch.equal(nearest_code(z.cuda(), c.cuda()).cpu(), nearest_code(z, c))
