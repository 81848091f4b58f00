"""Training losses: PatchGAN layout and init, hinge/adaptive-weight numbers, LPIPS from local files, schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import photo_crops
from torch import nn
from train_helpers import single_thread  # noqa: F401 - an autouse fixture: one intra-op thread

from vqgan_lc import MissingWeightsError, create_model
from vqgan_lc.errors import CheckpointError
from vqgan_lc.losses import (
    NLayerDiscriminator,
    PerceptualLoss,
    VQGANLoss,
    adaptive_weight,
    default_lin_weights,
    generator_loss,
    hinge_d_loss,
    reconstruction_loss,
    vanilla_d_loss,
    vgg16_trunk_state_dict,
)
from vqgan_lc.train.schedule import lr_factor


def test_discriminator_has_the_official_layout_and_init() -> None:
    torch.manual_seed(0)
    d = NLayerDiscriminator()
    # 3*64*16+64 + 64*128*16 + 2*128 + 128*256*16 + 2*256 + 256*16+1 (official f16 parameter count difference)
    assert sum(p.numel() for p in d.parameters()) == 663_361
    convs = [m for m in d.main if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs] == [
        (3, 64, 2, True), (64, 128, 2, False), (128, 256, 1, False), (256, 1, 1, True)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.main) == 2
    w = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3
    bn = torch.cat([m.weight.detach() for m in d.main if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn.mean()) - 1.0) < 0.01 and float(bn.std()) < 0.03
    assert all(float(m.bias.detach().abs().max()) == 0 for m in d.main if isinstance(m, nn.BatchNorm2d))
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 14, 14)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 62, 62)
    assert NLayerDiscriminator(n_layers=3)(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)  # taming's depth


def test_hinge_vanilla_and_generator_losses() -> None:
    real = torch.tensor([2.0, 0.5, -1.0]).view(3, 1, 1, 1)
    fake = torch.tensor([-2.0, 0.0, 1.0]).view(3, 1, 1, 1)
    # relu(1 - real) = [0, .5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    sp = torch.nn.functional.softplus
    assert vanilla_d_loss(real, fake).item() == pytest.approx(0.5 * float(sp(-real).mean() + sp(fake).mean()))
    assert generator_loss(fake).item() == pytest.approx(1 / 3)


def test_reconstruction_loss_kinds() -> None:
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.5)
    assert reconstruction_loss(x, y, "l1").item() == pytest.approx(0.5)
    assert reconstruction_loss(x, y, "l2").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        reconstruction_loss(x, y, "l3")  # type: ignore[arg-type]


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 3, 3, padding=1)
    h = torch.randn(2, 4, 8, 8)
    out = layer(h)
    nll = out.abs().mean()
    g = -(out * 3.0).mean()
    gn = torch.autograd.grad(nll, layer.weight, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, layer.weight, retain_graph=True)[0].norm()
    w = adaptive_weight(nll, g, layer.weight)
    assert not w.requires_grad
    assert w.item() == pytest.approx(float(gn / (gg + 1e-4)), rel=1e-6)
    assert adaptive_weight(nll * 1e6, g, layer.weight).item() == pytest.approx(1e4)  # clamped
    assert adaptive_weight(nll, g, layer.weight, max_weight=0.5).item() == pytest.approx(min(0.5, w.item()))
    (nll + g).backward()  # the graph was retained for the caller's backward
    assert layer.weight.grad is not None


def test_generator_loss_adds_up_the_official_terms() -> None:
    torch.manual_seed(0)
    model = create_model("tiny", codebook=torch.randn(256, 768) * 0.03)
    x = photo_crops(32, 2)
    out = model(x)
    obj = VQGANLoss(perceptual_weight=0.0)
    off = obj.generator_loss(x, out.reconstruction, out.quantizer)
    rec = (out.reconstruction - x).abs().mean().detach()
    ql = out.quantizer.loss.detach()
    assert off.loss.item() == pytest.approx(float(rec + 0.1 * ql), rel=1e-6)
    assert "g_loss" not in off.terms
    on = obj.generator_loss(x, out.reconstruction, out.quantizer, last_layer=model.decoder.last_layer, gan_active=True)
    g, dw = on.terms["g_loss"], on.terms["d_weight"]
    assert float(dw) > 0
    assert on.loss.item() == pytest.approx(float(rec + 0.1 * ql + 0.1 * dw * g), rel=1e-5)
    l2 = VQGANLoss(perceptual_weight=0.0, rec_loss="l2", rec_weight=2.0, quantizer_weight=0.0)
    assert l2.generator_loss(x, out.reconstruction, out.quantizer).loss.item() == pytest.approx(
        float(2 * (out.reconstruction - x).pow(2).mean().detach()), rel=1e-6)
    d = obj.discriminator_step_loss(x, out.reconstruction)
    assert d.loss.requires_grad and 0 < d.loss.item() < 2
    with pytest.raises(ValueError, match="PerceptualLoss"):
        VQGANLoss(perceptual_weight=1.0)


@pytest.fixture(scope="module")
def random_vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision VGG16 features state dict, saved like vgg16-397923af.pth."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    feats = vgg16(weights=None).features
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    return path


def test_lpips_loads_the_trunk_and_lin_layers_from_local_files(random_vgg_file: Path) -> None:
    loss = PerceptualLoss(random_vgg_file)
    file = torch.load(random_vgg_file, map_location="cpu", weights_only=True)
    net = loss.lpips.net.state_dict()
    assert torch.equal(net["slice1.0.weight"], file["features.0.weight"])
    assert torch.equal(net["slice3.14.bias"], file["features.14.bias"])
    assert torch.equal(net["slice5.28.weight"], file["features.28.weight"])
    lin = torch.load(default_lin_weights(), map_location="cpu", weights_only=True)
    assert torch.equal(loss.lpips.lin4.model[1].weight, lin["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.lpips.lin0.training  # no lin-layer dropout, ever
    x = photo_crops(32, 2, seed=1)
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    d = loss(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    assert float(loss(x, x).abs().max()) < 1e-6
    d.sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    # the same network again gives the same numbers (deterministic: eval mode)
    assert torch.allclose(loss(x, y.detach()), d.detach())


def test_lpips_weights_are_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="VGG16"):
        PerceptualLoss(None)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        vgg16_trunk_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="not a torchvision VGG16 state dict"):
        vgg16_trunk_state_dict(bad)
    assert PerceptualLoss(random_trunk=True)(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)).item() == 0


def test_schedule_is_linear_warmup_then_half_cosine() -> None:
    f = [lr_factor(s, warmup_steps=4, max_steps=12, min_lr_ratio=0.0) for s in range(14)]
    assert f[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]  # the very first step has lr 0, as in the official code
    assert f[8] == pytest.approx(0.5)  # half-way through the cosine
    assert f[12] == pytest.approx(0.0) and f[13] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert lr_factor(12, warmup_steps=4, max_steps=12, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(0, warmup_steps=0, max_steps=10) == 1.0
    assert lr_factor(5, warmup_steps=0, max_steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_lc_training_forward_gives_the_full_matrix_gradients() -> None:
    """The LC quantizer projects only the chosen rows with autograd in training (the backward then reads
    n_tokens rows of the frozen codebook, not all N); its gradients equal the official formula's."""
    import torch.nn.functional as F

    from vqgan_lc.quantize import LCQuantizer, nearest_code

    torch.manual_seed(0)
    for distance in ("euclidean", "cosine"):
        q = LCQuantizer(2000, 768, 8, distance=distance)
        q.set_codebook(torch.randn(2000, 768) * 0.03)
        z = torch.randn(2, 8, 4, 4, requires_grad=True)
        out = q(z)
        (out.z_q.square().sum() + out.loss).backward()
        got = (q.projection.weight.grad.clone(), q.projection.bias.grad.clone(), z.grad.clone())
        q.zero_grad()
        z2 = z.detach().clone().requires_grad_(True)
        codes = q.projection(q.codebook)  # the official code: all N codes with autograd, then a gather
        codes = F.normalize(codes, dim=1) if distance == "cosine" else codes
        zf = z2.permute(0, 2, 3, 1).reshape(-1, 8)
        zf = F.normalize(zf, dim=1) if distance == "cosine" else zf
        ids = nearest_code(zf, codes)
        assert torch.equal(ids, out.ids.reshape(-1))
        zq = F.embedding(ids, codes)
        loss = F.mse_loss(zq.detach(), zf) + 0.33 * F.mse_loss(zq, zf.detach())
        st = (zf + (zq - zf).detach()).reshape(2, 4, 4, 8).permute(0, 3, 1, 2)
        (st.square().sum() + loss).backward()
        for a, b in zip(got, (q.projection.weight.grad, q.projection.bias.grad, z2.grad)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert float(got[0].abs().sum()) > 0
