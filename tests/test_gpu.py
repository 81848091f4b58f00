"""CUDA paths: the same ids as the CPU. Every test carries the ``gpu`` marker and skips without CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import photo_crops, tiny_model

from vqgan_lc.quantize import full_matrix_nearest_code, nearest_code

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 convolutions and matmuls on CUDA (TF32 rounds to 10 mantissa bits and moves near-ties)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_nearest_code_on_cuda_equals_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5000, 8, generator=g)
    c = torch.randn(30000, 8, generator=g)
    cpu = nearest_code(z, c)
    assert torch.equal(nearest_code(z.cuda(), c.cuda()).cpu(), cpu)
    assert torch.equal(full_matrix_nearest_code(z.double(), c.double()), cpu)  # both are exact


def test_tiny_encode_on_cuda_equals_cpu_ids(no_tf32: None) -> None:
    """Documented tolerance: convolutions on CUDA and CPU sum in another order (~1e-6 relative), so an id
    may differ only where two codes are at nearly the same distance; at least 99% of ids are equal."""
    model = tiny_model()
    x = photo_crops(64, 8)
    cpu_ids = model.encode(x)
    gpu_model = tiny_model().cuda()
    gpu_ids = gpu_model.encode(x.cuda()).cpu()
    assert gpu_ids.shape == cpu_ids.shape == (8, 8, 8)
    equal = (gpu_ids == cpu_ids).float().mean().item()
    assert equal >= 0.99, equal
    if equal < 1:  # every difference is a near-tie in the CPU's own distances
        with torch.no_grad():
            z = model.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, 8)
            codes, _ = model.quantize.search_codes()
            d = torch.cdist(z.double(), codes.double()).pow(2)
            rows = torch.arange(len(z))
            gap = d[rows, gpu_ids.reshape(-1)] - d[rows, cpu_ids.reshape(-1)]
        assert (gap <= 1e-4 * d[rows, cpu_ids.reshape(-1)] + 1e-6).all()


def test_bf16_autocast_keeps_the_search_in_float32() -> None:
    model = tiny_model().cuda()
    x = photo_crops(64, 4).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        z = model.encode_latents(x)
        out = model.quantize(z)
    assert z.dtype == torch.bfloat16 and out.z_q.dtype == torch.float32
    with torch.no_grad():
        codes, _ = model.quantize.search_codes()
        assert codes.dtype == torch.float32
        zf = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        assert torch.equal(out.ids.reshape(-1), nearest_code(zf, codes))  # fp32 search over fp32 codes
