"""nearest_code: exact argmin with lowest-index ties, on every code path, without an N x K matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqgan_lc.quantize import search
from vqgan_lc.quantize.search import full_matrix_nearest_code, nearest_code


def brute_force(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = ((z.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)  # first minimum: lowest index


PATHS = {
    "auto": lambda z, c, sq: nearest_code(z, c),
    "fused": lambda z, c, sq: search._fused_search(z, c, sq),
    "blocked_cpu": lambda z, c, sq: search._blocked_search_cpu(z, c, sq),
    "blocked_tiles": lambda z, c, sq: search._blocked_search(z, c, sq, 7, 300),  # small tiles: every merge case
}


def _run(path: str, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    if path == "fused" and not search.fused_search_available():
        pytest.skip("the C kernel is not built on this install")
    return PATHS[path](z.float(), c.float(), c.float().pow(2).sum(1))


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

    def spy(*shape, **kw):  # noqa: ANN002, ANN003
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


def test_fused_kernel_handles_threads_and_remainders() -> None:
    if not search.fused_search_available():
        pytest.skip("the C kernel is not built on this install")
    g = torch.Generator().manual_seed(4)
    for n in (1, 63, 64, 65, 130, 1001):
        z = torch.randint(-3, 4, (n, 8), generator=g).float()
        c = torch.randint(-3, 4, (1237, 8), generator=g).float()
        assert torch.equal(nearest_code(z, c), brute_force(z, c)), n
    assert np.dtype(np.int64) == np.dtype(nearest_code(z, c).numpy().dtype)


@pytest.mark.gpu
def test_cuda_blocked_path_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(5)
    z = torch.randint(-2, 3, (20000, 8), generator=g).float()
    c = torch.randint(-2, 3, (100000, 8), generator=g).float()
    assert torch.equal(nearest_code(z.cuda(), c.cuda()).cpu(), nearest_code(z, c))
