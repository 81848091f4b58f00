"""VQGANLC: shapes, gradients, files and every user error, on the tiny preset and real photographs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vqgan_lc import (
    VQGANLC,
    CheckpointError,
    FormatVersionError,
    ImageShapeError,
    TokenRangeError,
    create_model,
    get_config,
    list_models,
)
from vqgan_lc.errors import ConfigError
from vqgan_lc.quantize import (
    CodebookUsage,
    EMAQuantizer,
    FCCosineQuantizer,
    FCQuantizer,
    LCQuantizer,
    ProjectedCodebookQuantizer,
    VQQuantizer,
)


def tiny(seed: int = 0, **overrides) -> VQGANLC:  # noqa: ANN003
    torch.manual_seed(seed)
    # Scaled so the projected codes are as large as a fresh encoder's latents (otherwise one code wins).
    codebook = torch.randn(512, 768) * 0.03
    return create_model("tiny", codebook=codebook, **overrides)


def test_presets_have_the_official_sizes() -> None:
    assert {"vqgan-lc-f16-100k", "vqgan-lc-f8-100k", "tiny"} <= set(list_models())
    f16 = VQGANLC(get_config("vqgan-lc-f16-100k"))
    # Official f16: 72,421,844 trainable parameters including the 663,361 of the n_layers=2 PatchGAN.
    assert sum(p.numel() for p in f16.parameters() if p.requires_grad) == 72_421_844 - 663_361
    assert f16.downsample_factor == 16 and f16.quantize.codebook.shape == (100_000, 768)
    assert f16.quantize.projection.weight.shape == (8, 768)
    f8 = get_config("vqgan-lc-f8-100k")
    assert f8.downsample_factor == 8 and f8.embed_dim == 4
    with pytest.raises(KeyError, match="unknown preset"):
        get_config("nope")


def test_projector_init_follows_the_official_std() -> None:
    torch.manual_seed(0)
    q = LCQuantizer(10, 768, 8)
    assert abs(float(q.projection.weight.detach().std()) - 8**-0.5) < 0.01


def test_encode_decode_shapes_and_eval_consistency(crops64: torch.Tensor) -> None:
    m = tiny().eval()
    ids = m.encode(crops64)
    assert ids.shape == (6, 8, 8) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < m.codebook_size
    assert len(ids.unique()) > 10
    with torch.no_grad():
        out = m(crops64)
    assert torch.equal(out.quantizer.ids, ids)
    assert torch.allclose(m.decode(ids), out.reconstruction, atol=1e-5)
    assert out.quantizer.counts.sum() == ids.numel()


def test_every_trainable_parameter_gets_a_gradient_and_the_codebook_none(crops64: torch.Tensor) -> None:
    m = tiny().train()
    before = m.quantize.codebook.clone()
    assert not any(p is m.quantize.codebook for p in m.parameters())
    out = m(crops64)
    loss = F.l1_loss(out.reconstruction, crops64) + out.quantizer.loss
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # The projector is reached both through the codebook loss and (straight-through) nowhere else.
    assert m.quantize.projection.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    w0 = m.quantize.projection.weight.detach().clone()
    opt.step()
    assert not torch.equal(w0, m.quantize.projection.weight)
    assert torch.equal(before, m.quantize.codebook)
    assert m.quantize.codebook.grad is None


def test_quantizer_loss_terms_use_the_official_weights(crops64: torch.Tensor) -> None:
    m = tiny().eval()
    with torch.no_grad():
        q = m(crops64).quantizer
    assert torch.allclose(q.loss, 1.0 * q.commit_loss + 0.33 * q.codebook_loss)
    m2 = tiny(quantizer={"commit_weight": 0.25, "codebook_weight": 1.0}).eval()
    with torch.no_grad():
        q2 = m2(crops64).quantizer
    assert torch.allclose(q2.loss, 0.25 * q2.commit_loss + q2.codebook_loss)


def test_straight_through_passes_decoder_gradient_to_the_encoder(crops64: torch.Tensor) -> None:
    m = tiny().train()
    out = m(crops64)
    F.mse_loss(out.reconstruction, crops64).backward()  # no quantizer loss: only the straight-through path
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.quantize.projection.weight.grad is None or m.quantize.projection.weight.grad.abs().sum() == 0


def test_cosine_distance_normalises_latents_and_codes(crops64: torch.Tensor) -> None:
    m = tiny(quantizer={"distance": "cosine"}).eval()
    with torch.no_grad():
        z = m.encode_latents(crops64)
        q = m.quantize_latents(z)
        codes = m.quantize.search_table()  # normalised for cosine
    zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    assert torch.equal(q.ids.reshape(-1), (zf @ codes.t()).argmax(1))
    assert torch.allclose(q.z_q.norm(dim=1), torch.ones(6, 8, 8), atol=1e-5)


def test_eval_cache_follows_projector_updates(crops64: torch.Tensor) -> None:
    m = tiny().eval()
    ids1 = m.encode(crops64)
    with torch.no_grad():
        m.quantize.projection.weight.mul_(-1.0)
    with torch.no_grad():
        expected = m.quantize(m.encode_latents(crops64)).ids
        fresh = m.quantize.projection(m.quantize.codebook)
    assert torch.allclose(m.quantize.search_table(), fresh)
    assert m.quantize.search_table() is m.quantize.search_table()  # cached in eval until the weights change
    assert torch.equal(m.encode(crops64), expected) and not torch.equal(ids1, expected)


@pytest.mark.parametrize("kind,cls", [("vq", VQQuantizer), ("fc", FCQuantizer), ("fc-cosine", FCCosineQuantizer),
                                      ("ema", EMAQuantizer), ("lc", LCQuantizer)])
def test_baselines_share_the_interface(kind: str, cls: type, crops64: torch.Tensor) -> None:
    torch.manual_seed(0)
    m = create_model("tiny", quantizer={"kind": kind, "codebook_size": 256}).train()
    assert isinstance(m.quantize, cls)
    before = m.quantize.search_table().clone()
    assert not before.requires_grad  # the search table never carries autograd
    out = m(crops64)
    assert out.quantizer.z_q.shape == (6, 8, 8, 8) and out.quantizer.ids.shape == (6, 8, 8)
    ids = out.quantizer.ids.reshape(-1)
    rows = m.quantize.embed(ids)
    assert rows.requires_grad == (kind != "ema")  # embed is differentiable where the codes are trained
    if kind != "ema":
        assert torch.allclose(rows, before[ids], atol=1e-6)
    (F.l1_loss(out.reconstruction, crops64) + out.quantizer.loss).backward()
    if kind == "ema":
        assert not torch.equal(before, m.quantize.search_table())  # EMA moved the codes in the forward pass
        assert m.quantize.codebook_weight == 0.0 and m.config.quantizer.codebook_weight == 0.0
        assert not out.quantizer.codebook_loss.requires_grad and float(out.quantizer.codebook_loss) > 0
        assert torch.equal(out.quantizer.loss, 1.0 * out.quantizer.commit_loss)  # no codebook term
        assert not any(p is m.quantize.embedding for p in m.parameters())
    elif kind in ("vq", "fc", "fc-cosine"):
        assert m.quantize.embedding.grad.abs().sum() > 0
    if kind == "fc-cosine":
        assert torch.allclose(out.quantizer.z_q.norm(dim=1), torch.ones(6, 8, 8), atol=1e-5)


@pytest.mark.parametrize("kind", ["fc", "ema"])
def test_official_baselines_start_from_uniform_codes(kind: str) -> None:
    # Official models_vq.py (tuning_codebook -1): an N x D' codebook, uniform(-1/N, 1/N); Euclidean search.
    torch.manual_seed(0)
    cfg = get_config(f"vqgan-{kind}-f16-16k")
    assert cfg.quantizer.kind == kind and cfg.quantizer.distance == "euclidean" and cfg.embed_dim == 8
    q = create_model("tiny", quantizer={"kind": kind, "codebook_size": 4096}).quantize
    codes = q.embedding.detach()
    assert codes.shape == (4096, 8)
    assert float(codes.abs().max()) <= 1 / 4096 and float(codes.std()) == pytest.approx(1 / 4096 / 3**0.5, rel=0.05)
    z = torch.randn(2, 8, 3, 3) * 1e-4
    zf = z.permute(0, 2, 3, 1).reshape(-1, 8)
    q.eval()
    assert torch.equal(q.search(z).reshape(-1), torch.cdist(zf, codes).argmin(1))  # no normalisation
    cos = FCCosineQuantizer(4096, 8)
    assert float(cos.embedding.detach().std()) == pytest.approx(1.0, rel=0.05)  # the variant keeps N(0, 1)


def test_ema_every_forward_updates_in_eval_as_the_official_code() -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 2, 3, 4)
    for update, moves in (("training", False), ("every_forward", True)):
        q = EMAQuantizer(6, 2, decay=0.9, update=update).eval()
        before = q.embedding.clone()
        q(z)
        assert (not torch.equal(before, q.embedding)) == moves
        q.search(z)  # search (encode) never updates
    assert create_model("tiny", quantizer={"kind": "ema", "ema_update": "every_forward"}).quantize.update == "every_forward"
    with pytest.raises(ConfigError, match="ema_update"):
        get_config("tiny", quantizer={"kind": "ema", "ema_update": "always"})


def test_a_saved_cosine_fc_model_loads_as_fc_cosine(tmp_path, crops64: torch.Tensor) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = create_model("tiny", quantizer={"kind": "fc-cosine", "codebook_size": 64}).eval()
    m.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["quantizer"]["kind"] = "fc"  # what config.json held when 'fc' was the cosine variant
    path.write_text(json.dumps(doc))
    m2 = VQGANLC.from_pretrained(tmp_path / "m")
    assert m2.config.quantizer.kind == "fc-cosine" and isinstance(m2.quantize, FCCosineQuantizer)
    assert torch.equal(m2.encode(crops64), m.encode(crops64))


def test_ema_update_follows_the_moving_average_formula() -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(6, 2, decay=0.9, eps=1e-5).train()
    avg0, codes0 = q.embed_avg.clone(), q.embedding.clone()
    z = torch.randn(1, 2, 3, 4)
    out = q(z)
    zf, ids = z.permute(0, 2, 3, 1).reshape(-1, 2), out.ids.reshape(-1)
    assert torch.equal(ids, ((zf[:, None] - codes0[None]) ** 2).sum(-1).argmin(1))  # searched with the old codes
    counts = torch.bincount(ids, minlength=6).float()
    sums = torch.zeros(6, 2).index_add_(0, ids, zf)
    size = 0.1 * counts
    avg = 0.9 * avg0 + 0.1 * sums
    smoothed = (size + 1e-5) / (size.sum() + 6 * 1e-5) * size.sum()
    assert torch.allclose(q.cluster_size, size) and torch.allclose(q.embed_avg, avg)
    assert torch.allclose(q.embedding, avg / smoothed[:, None])
    q.eval()
    q(z)
    assert torch.allclose(q.embedding, avg / smoothed[:, None])  # no update in eval


def test_baselines_refuse_a_conflicting_config() -> None:
    with pytest.raises(ConfigError, match="'fc-cosine' quantizer needs distance='cosine'"):
        create_model("tiny", quantizer={"kind": "fc-cosine", "distance": "euclidean"})
    with pytest.raises(ConfigError, match="'fc' quantizer needs distance='euclidean'"):
        create_model("tiny", quantizer={"kind": "fc", "distance": "cosine"})
    with pytest.raises(ConfigError, match="use kind 'fc-cosine'"):
        FCQuantizer(16, 8, distance="cosine")
    with pytest.raises(ConfigError, match="'ema' quantizer needs codebook_weight=0.0"):
        create_model("tiny", quantizer={"kind": "ema", "codebook_weight": 0.33})
    with pytest.raises(ConfigError, match="its distance is 'cosine', not 'euclidean'"):
        FCCosineQuantizer(16, 8, distance="euclidean")
    with pytest.raises(ConfigError, match="codebook_weight is 0.0, not 0.5"):
        EMAQuantizer(16, 8, codebook_weight=0.5)
    # Naming a kind without those fields gives the kind's values; an explicit choice is carried over.
    assert get_config("tiny", quantizer={"kind": "fc-cosine"}).quantizer.distance == "cosine"
    assert get_config("tiny", quantizer={"kind": "fc"}).quantizer.distance == "euclidean"
    assert get_config("tiny", quantizer={"kind": "ema"}).quantizer.codebook_weight == 0.0
    assert get_config("tiny", quantizer={"kind": "fc-cosine"}).replace(quantizer={"kind": "vq"}).quantizer.distance == "euclidean"
    cos = get_config("tiny", quantizer={"distance": "cosine", "codebook_weight": 1.0})
    assert cos.replace(quantizer={"kind": "vq"}).quantizer.distance == "cosine"
    assert cos.replace(quantizer={"kind": "vq"}).quantizer.codebook_weight == 1.0
    with pytest.raises(ConfigError, match="codebook_weight"):
        cos.replace(quantizer={"kind": "ema"})
    assert json.loads(json.dumps(get_config("tiny").to_dict()))["quantizer"]["distance"] == "euclidean"


def test_encode_searches_without_the_training_forward(crops64: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny().eval()
    with torch.no_grad():
        expected = m(crops64).quantizer.ids

    def no_forward(z: torch.Tensor) -> None:
        raise AssertionError("encode must not compute losses or the usage histogram")

    monkeypatch.setattr(m.quantize, "forward", no_forward)
    assert torch.equal(m.encode(crops64), expected)
    assert torch.equal(m.quantize.search(m.encode_latents(crops64).detach()), expected)


def test_usage_statistics() -> None:
    u = CodebookUsage(8)
    u.update(torch.tensor([[0, 1], [1, 3]]))
    assert u.used == 3 and u.utilization == 3 / 8
    u.reset()
    u.update(torch.arange(8))
    assert abs(u.perplexity - 8.0) < 1e-9


# ---------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path, crops64: torch.Tensor) -> None:  # noqa: ANN001
    m = tiny().eval()
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["weights"] == "full" and cfg["config"]["ch_mult"] == [1, 2, 2, 4]
    m2 = VQGANLC.from_pretrained(tmp_path / "m")
    assert m2.config == m.config
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(m2.encode(crops64), m.encode(crops64))


def test_inference_only_export_is_small_and_identical(tmp_path, crops64: torch.Tensor) -> None:  # noqa: ANN001
    m = tiny().eval()
    m.save_pretrained(tmp_path / "full")
    m.save_pretrained(tmp_path / "inf", inference_only=True)
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    inf_size = (tmp_path / "inf" / "model.safetensors").stat().st_size
    assert full_size - inf_size >= 512 * 768 * 4 - 512 * 8 * 4  # raw codebook gone, projected codes kept
    mi = VQGANLC.from_pretrained(tmp_path / "inf")
    assert mi.inference_only and "quantize.codebook" not in mi.state_dict()
    assert isinstance(mi.quantize, ProjectedCodebookQuantizer) and not list(mi.quantize.parameters())
    assert torch.equal(mi.quantize.search_table(), m.quantize.search_table())
    ids = m.encode(crops64)
    assert torch.equal(mi.encode(crops64), ids)
    assert torch.equal(mi.decode(ids), m.decode(ids))
    mi.save_pretrained(tmp_path / "again")  # an inference model re-saves as inference
    assert json.loads((tmp_path / "again" / "config.json").read_text())["weights"] == "inference"


# ---------------------------------------------------------------- user errors


def test_image_errors() -> None:
    m = tiny().eval()
    with pytest.raises(ImageShapeError, match="multiple of the downsampling factor 8"):
        m.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ImageShapeError, match="1 channels but the model expects 3"):
        m.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ImageShapeError, match=r"\(B, C, H, W\)"):
        m.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ImageShapeError, match="floats"):
        m.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_id_errors() -> None:
    m = tiny().eval()
    with pytest.raises(TokenRangeError, match=r"\[0, 512\)"):
        m.decode(torch.full((1, 8, 8), 512))
    with pytest.raises(TokenRangeError, match=r"\[-1, 0\]"):
        m.decode(torch.tensor([[[-1, 0]]]))
    with pytest.raises(TokenRangeError, match="integers"):
        m.decode(torch.zeros(1, 8, 8))
    with pytest.raises(TokenRangeError, match=r"\(B, h, w\)"):
        m.decode(torch.zeros(8, 8, dtype=torch.long))


def test_file_errors(tmp_path) -> None:  # noqa: ANN001
    m = tiny()
    d = m.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a vqgan-lc model directory"):
        VQGANLC.from_pretrained(tmp_path / "missing")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatVersionError, match="format_version 99"):
        VQGANLC.from_pretrained(d)
    cfg["format_version"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        VQGANLC.from_pretrained(d)
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        VQGANLC.from_pretrained(d)


def test_weights_of_another_shape_are_refused_with_the_keys_named(tmp_path) -> None:  # noqa: ANN001
    tiny().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["config"]["embed_dim"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"quant_conv.weight: file \(8, 64, 1, 1\) vs model \(4, 64, 1, 1\)"):
        VQGANLC.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------- the paper's ablation switches (Tables 6, 10)
def test_mlp_projector_and_trainable_codebook(crops64: torch.Tensor) -> None:
    torch.manual_seed(0)
    m = create_model("tiny", codebook=torch.randn(256, 768) * 0.03,
                     quantizer={"projector": "mlp", "codebook_trainable": True}).train()
    q = m.quantize
    names = {n: tuple(p.shape) for n, p in q.named_parameters()}
    assert names == {"codebook": (256, 768), "projection.0.weight": (256, 768), "projection.0.bias": (256,),
                     "projection.2.weight": (8, 256), "projection.2.bias": (8,)}
    table = torch.relu(q.codebook @ q.projection[0].weight.T + q.projection[0].bias) @ q.projection[2].weight.T \
        + q.projection[2].bias
    assert torch.allclose(q.search_table(), table.detach(), atol=1e-6)
    out = m(crops64)
    (F.l1_loss(out.reconstruction, crops64) + out.quantizer.loss).backward()
    used = out.quantizer.ids.unique()
    grad_rows = q.codebook.grad.abs().sum(1) > 0
    assert torch.equal(grad_rows.nonzero().reshape(-1), used)  # the codebook loss reaches the chosen rows only
    assert q.projection[0].weight.grad.abs().sum() > 0
    frozen = create_model("tiny", codebook=torch.randn(256, 768) * 0.03).quantize
    assert "codebook" not in dict(frozen.named_parameters()) and "codebook" in dict(frozen.named_buffers())


def test_projector_free_mode_normalises_the_latent_only(tmp_path, crops64: torch.Tensor) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cb = torch.randn(128, 768) * 3.0
    m = create_model("tiny", codebook=cb, embed_dim=768, quantizer={"projector": "none"}).eval()
    assert not hasattr(m.quantize, "projection") and m.quantize.latent_l2
    with torch.no_grad():
        z = m.encode_latents(crops64[:2])
    zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 768), dim=1)
    expected = ((zf[:, None] - cb[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(m.quantize.search(z).reshape(-1), expected)
    out = m.quantize(z)
    assert torch.equal(out.z_q.permute(0, 2, 3, 1).reshape(-1, 768), cb[expected])  # codes raw, not normalised
    assert float(out.commit_loss) == pytest.approx(float(((cb[expected] - zf) ** 2).mean()), rel=1e-5)
    m.save_pretrained(tmp_path / "inf", inference_only=True)
    mi = VQGANLC.from_pretrained(tmp_path / "inf")
    assert mi.quantize.latent_l2 and torch.equal(mi.encode(crops64[:2]), m.encode(crops64[:2]))
    with pytest.raises(ConfigError, match="embed_dim must equal codebook_dim"):
        get_config("tiny", quantizer={"projector": "none"})
    with pytest.raises(ConfigError, match="switches of the 'lc' quantizer"):
        get_config("tiny", quantizer={"kind": "vq", "projector": "mlp"})


def test_random_frozen_codebook_with_projector() -> None:
    from vqgan_lc.build import ModelSpec, build_model

    m = build_model(ModelSpec(preset="tiny", codebook_init="random", codebook_size=500, codebook_seed=3))
    cb = m.quantize.codebook
    assert cb.shape == (500, 768) and not cb.requires_grad and float(cb.abs().max()) <= 1 / 500
    assert float(cb.std()) == pytest.approx(1 / 500 / 3**0.5, rel=0.02)
    assert m.provenance["codebook"]["random"] == {"init": "uniform(-1/N, 1/N)", "seed": 3}
    again = build_model(ModelSpec(preset="tiny", codebook_init="random", codebook_size=500, codebook_seed=3))
    assert torch.equal(again.quantize.codebook, cb)
    with pytest.raises(ConfigError, match="codebook_init 'random'"):
        build_model(ModelSpec(preset="tiny", codebook_init="random", codebook="file.safetensors"))


def test_config_hash_of_earlier_models_is_unchanged() -> None:
    """Token directories record the model's config hash: fields added for issue 15 (at their defaults) must not
    change it. The value below is the hash of this config computed before those fields existed."""
    import hashlib

    cfg = get_config("tiny").to_dict()
    for key in ("ema_update", "projector", "codebook_trainable"):
        cfg["quantizer"].pop(key)
    before = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    assert VQGANLC(get_config("tiny")).config_hash() == before
    assert VQGANLC(get_config("tiny", quantizer={"projector": "mlp"})).config_hash() != before
