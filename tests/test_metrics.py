"""Each metric against a value known in closed form or by construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqgan_lc.data import to_uint8
from vqgan_lc.errors import CheckpointError, MissingWeightsError
from vqgan_lc.metrics import CodebookUsage, psnr, rgb_to_y, ssim, to_unit, usage_perplexity


def _noise_with_mse(shape: tuple[int, ...], mse: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform noise rescaled so that each image's mean squared value is exactly ``mse[b]``."""
    g = torch.Generator().manual_seed(seed)
    n = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    scale = (mse / n.pow(2).mean(dim=(1, 2, 3))).sqrt()
    return n * scale.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------------- PSNR
def test_psnr_of_known_noise_level() -> None:
    g = torch.Generator().manual_seed(1)
    x = 0.25 + 0.5 * torch.rand(3, 3, 32, 40, generator=g, dtype=torch.float64)  # room for the noise in [0, 1]
    mse = torch.tensor([1e-2, 4e-3, 2.5e-3], dtype=torch.float64)
    y = x + _noise_with_mse(x.shape, mse)
    assert 0 <= y.min() and y.max() <= 1
    expected = 10 * torch.log10(1 / mse)
    torch.testing.assert_close(psnr(y, x, channel="rgb"), expected, atol=1e-4, rtol=0)
    assert psnr(y.float(), x.float()).dtype == torch.float64  # computed in float64 whatever the input


def test_psnr_y_channel_closed_form() -> None:
    # The same noise in R, G and B moves Y by (65.481 + 128.553 + 24.966) / 255 = 219/255 of it.
    g = torch.Generator().manual_seed(2)
    x = 0.25 + 0.5 * torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    mse = torch.tensor([1e-2, 1e-3], dtype=torch.float64)
    n = _noise_with_mse((2, 1, 24, 24), mse)
    y = x + n.expand(-1, 3, -1, -1)
    expected = 10 * torch.log10(1 / (mse * (219 / 255) ** 2))
    torch.testing.assert_close(psnr(y, x, channel="y"), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(psnr(y, x, channel="rgb"), 10 * torch.log10(1 / mse), atol=1e-4, rtol=0)


def test_bt601_luma_endpoints_and_weights() -> None:
    black, white = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert torch.allclose(rgb_to_y(black), torch.full((1, 1, 2, 2), 16 / 255))
    assert torch.allclose(rgb_to_y(white), torch.full((1, 1, 2, 2), 235 / 255))
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1
    assert rgb_to_y(red).item() == pytest.approx((65.481 + 16) / 255)


def test_psnr_identical_images_is_pyiqa_ceiling() -> None:
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(psnr(x, x), torch.full((2,), 80.0, dtype=torch.float64))  # 10 log10(1 / 1e-8)


def test_range_helpers() -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_unit(x)[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    pix = torch.arange(256, dtype=torch.float32).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert torch.equal(to_uint8(pix / 127.5 - 1).long(), pix.long())  # exact round trip of stored pixels


# ----------------------------------------------------------------------------------------- SSIM
def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM written out as piq computes it: 11x11 Gaussian (sigma 1.5), valid filtering, per channel."""
    f = max(1, round(min(x.shape[-2:]) / 256))
    if f > 1:
        x, y = F.avg_pool2d(x, f), F.avg_pool2d(y, f)
    c = (torch.arange(11, dtype=x.dtype) - 5).pow(2)
    g = torch.exp(-(c[None] + c[:, None]) / (2 * 1.5**2))
    k = (g / g.sum()).expand(x.shape[1], 1, 11, 11)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=x.shape[1])

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3))


def test_ssim_of_identical_images_is_one() -> None:
    x = torch.rand(3, 3, 48, 64)
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ssim_of_constant_images_closed_form() -> None:
    # Constant images a and b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.5
    x, y = torch.full((1, 3, 32, 32), a), torch.full((1, 3, 32, 32), b)
    c1 = 0.01**2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)


@pytest.mark.parametrize("size", [64, 384])  # 384 px: piq's 2x average-pool pre-downsampling
def test_ssim_matches_piq_definition(size: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, size, size, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    value = ssim(y, x)  # computed in float32
    torch.testing.assert_close(value, _reference_ssim(y, x), atol=1e-5, rtol=0)
    assert 0 < value.min() < 1


def test_ssim_rejects_tiny_images() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ----------------------------------------------------------------------------------------- Fréchet distance
class _Identity(torch.nn.Module):
    """A 'feature extractor' that returns its input: the features are the samples themselves."""

    num_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _samples_with_moments(mu: torch.Tensor, var: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` samples whose sample mean is exactly ``mu`` and sample covariance exactly ``diag(var)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(mu), generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # sample covariance = identity
    return white * var.sqrt() + mu


def test_frechet_distance_of_two_gaussians_closed_form() -> None:
    """torchmetrics' FID computation (what rFID uses) on exact Gaussian moments vs
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), elementwise for diagonal covariances."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    mu1, var1 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 4.0, 0.25, 2.0])
    mu2, var2 = torch.tensor([1.0, 1.0, 0.0, -0.5]), torch.tensor([9.0, 1.0, 0.25, 0.5])
    a = _samples_with_moments(mu1.double(), var1.double(), 64, seed=0)
    b = _samples_with_moments(mu2.double(), var2.double(), 48, seed=1)
    fid = FrechetInceptionDistance(feature=_Identity())
    fid.update(a, real=True)
    fid.update(b, real=False)
    expected = float((mu1 - mu2).pow(2).sum() + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum())
    assert expected == pytest.approx(6 + (10 - 6) + (5 - 4) + 0 + (2.5 - 2))  # = 11.5
    assert float(fid.compute()) == pytest.approx(expected, rel=1e-9)


def test_inception_weights_missing_or_wrong(tmp_path) -> None:  # noqa: ANN001
    from vqgan_lc.metrics import read_inception_weights

    with pytest.raises(MissingWeightsError, match="--inception-weights"):
        read_inception_weights(tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="Inception"):
        read_inception_weights(tmp_path / "other.pth")


def random_inception_file(path, monkeypatch) -> None:  # noqa: ANN001
    """torch-fidelity's Inception-v3 with random weights (built without its download), saved as a state dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_fid_with_local_random_inception_weights(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from vqgan_lc.metrics import build_fid

    random_inception_file(tmp_path / "inception.pth", monkeypatch)
    fid = build_fid(tmp_path / "inception.pth")
    assert torch.equal(fid.inception.fc.weight, torch.load(tmp_path / "inception.pth")["fc.weight"])
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(real, real=True)
    fid.update(255 - real, real=False)
    different = float(fid.compute())
    assert abs(same) < 1e-3 * max(1.0, different)
    assert different > 0 and math.isfinite(different)


# ----------------------------------------------------------------------------------------- usage
def test_utilization_and_perplexity_of_known_histogram() -> None:
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1], [2, 3]]).repeat(5, 1, 1))  # uniform over 4 of 8 codes
    assert usage.used == 4
    assert usage.utilization == 0.5
    assert usage.perplexity == pytest.approx(4.0, abs=1e-12)
    usage.reset()
    usage.update(torch.tensor([5, 5, 6, 7]))  # p = (1/2, 1/4, 1/4): exp(H) = 2^1.5
    assert usage.utilization == 3 / 8
    assert usage.perplexity == pytest.approx(2**1.5, abs=1e-12)
    assert float(usage_perplexity(torch.tensor([0, 7, 0]))) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- LPIPS
def _alexnet_file(path) -> dict:  # noqa: ANN001
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_lpips_alex_loads_local_trunk_and_lin_weights(tmp_path) -> None:  # noqa: ANN001
    from vqgan_lc.losses.lpips import default_lin_weights
    from vqgan_lc.metrics import LPIPSMetric

    state = _alexnet_file(tmp_path / "alex.pth")
    metric = LPIPSMetric("alex", tmp_path / "alex.pth")
    net = metric.lpips.net
    assert torch.equal(net.state_dict()["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(net.state_dict()["slice5.10.bias"], state["features.10.bias"])
    lin = torch.load(default_lin_weights("alex"), map_location="cpu", weights_only=True)
    assert torch.equal(metric.lpips.lin2.model[1].weight, lin["lin2.model.1.weight"])

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    torch.testing.assert_close(metric(x, x), torch.zeros(2, dtype=torch.float64))
    d = metric(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(metric(y, x), d)  # symmetric
    # "lpips" clamps the reconstruction; "official" feeds 2x - 1 of the unclamped tensors (pyiqa's default).
    over = x * 1.5
    torch.testing.assert_close(metric(x, over), metric(x, over.clamp(-1, 1)))
    official = LPIPSMetric("alex", tmp_path / "alex.pth", convention="official")
    expected = metric.lpips(2 * x - 1, 2 * over - 1).reshape(2).double()
    torch.testing.assert_close(official(x, over), expected)


def test_lpips_missing_or_wrong_weights(tmp_path) -> None:  # noqa: ANN001
    from vqgan_lc.metrics import LPIPSMetric

    with pytest.raises(MissingWeightsError, match="--lpips-alex-weights"):
        LPIPSMetric("alex", tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a torchvision AlexNet"):
        LPIPSMetric("alex", tmp_path / "partial.pth")
    with pytest.raises(MissingWeightsError, match="--lpips-vgg-weights"):
        LPIPSMetric("vgg", tmp_path / "missing.pth")


@pytest.mark.slow
def test_lpips_vgg_loads_local_trunk(tmp_path) -> None:  # noqa: ANN001
    import torchvision

    from vqgan_lc.metrics import LPIPSMetric

    torch.manual_seed(0)
    feats = torchvision.models.vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in feats.items()}, tmp_path / "vgg16.pth")
    metric = LPIPSMetric("vgg", tmp_path / "vgg16.pth")
    assert torch.equal(metric.lpips.net.state_dict()["slice5.28.weight"], feats["28.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert metric(x, x).item() == pytest.approx(0.0, abs=1e-12)
    assert metric(x, -x).item() > 0
