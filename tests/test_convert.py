"""Official release checkpoints: conversion reproduces the official code's outputs on the golden fixture."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgan_lc import VQGANLC, CheckpointError, CodebookError
from vqgan_lc.cli.main import main
from vqgan_lc.codebook import load_codebook
from vqgan_lc.convert import convert_official, load_official_checkpoint

IN_REPO_FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny"


def _load(fx, name: str) -> torch.Tensor:  # noqa: ANN001
    return torch.from_numpy(np.load(fx / name))


def test_in_repo_official_fixture_converts_to_the_official_ids_and_reconstructions(tmp_path) -> None:  # noqa: ANN001
    """Runs in every clone: tests/fixtures/official_tiny was made by running the official model code."""
    fx = IN_REPO_FIXTURE
    expected = json.loads((fx / "expected.json").read_text())
    out = tmp_path / "converted"
    rc = main(["convert", "--checkpoint", str(fx / "vqgan_lc_official_format.pth"),
               "--config", str(fx / "vq_config.yaml"), "--out", str(out)])
    assert rc == 0
    m = VQGANLC.from_pretrained(out)
    assert m.codebook_size == expected["n_codes"] == 256 and m.config.embed_dim == expected["embed_dim"] == 8
    x = _load(fx, "input.npy")
    official_ids = _load(fx, "indices.npy")
    assert int(official_ids.unique().numel()) == expected["distinct_ids"] > 50  # a fair test: many codes in use
    with torch.no_grad():
        ids = m.encode(x)
        fwd = m(x)
        recon_from_ids = m.decode(ids)
    assert ids.dtype == torch.int64 and torch.equal(ids, official_ids)
    assert torch.allclose(fwd.reconstruction, _load(fx, "reconstruction.npy"), rtol=0, atol=1e-4)
    assert torch.allclose(recon_from_ids, _load(fx, "reconstruction_from_indices.npy"), rtol=0, atol=1e-4)
    assert abs(float(fwd.quantizer.loss) - expected["quantizer_loss_eval"]) < 1e-5


@pytest.fixture(scope="module")
def converted(official_tiny):  # noqa: ANN001, ANN201
    return convert_official(
        official_tiny / "vqgan_lc_official_format.pth",
        codebook=official_tiny / "codebook.pth",
        yaml_config=official_tiny / "vq_config.yaml",
    )


def test_ids_and_reconstructions_equal_the_official_code(converted, official_tiny) -> None:  # noqa: ANN001
    x = _load(official_tiny, "input.npy")
    expected = json.loads((official_tiny / "expected.json").read_text())
    with torch.no_grad():
        z = converted.encode_latents(x)
        out = converted(x)
    assert torch.allclose(z, _load(official_tiny, "pre_quant_latent.npy"), atol=1e-4)
    assert torch.allclose(converted.quantize.projected_codebook(), _load(official_tiny, "projected_codebook.npy"), atol=1e-6)
    ids = converted.encode(x)
    assert torch.equal(ids, _load(official_tiny, "indices.npy"))
    assert torch.allclose(out.reconstruction, _load(official_tiny, "reconstruction.npy"), atol=1e-4)
    assert torch.allclose(converted.decode(ids), _load(official_tiny, "reconstruction_from_indices.npy"), atol=1e-4)
    assert abs(float(out.quantizer.loss) - expected["quantizer_loss_eval"]) < 1e-6
    assert converted.codebook_size == expected["n_codes"] and converted.config.embed_dim == expected["embed_dim"]


def test_every_key_of_the_official_state_dict_is_used_or_dropped_on_purpose(converted, official_tiny) -> None:  # noqa: ANN001
    keys = json.loads((official_tiny / "state_dict_keys.json").read_text())
    training_only = [k for k in keys if k.startswith(("discriminator.", "perceptual_loss."))]
    assert len(converted.state_dict()) == len(keys) - len(training_only)


def test_cli_convert_writes_a_loadable_directory(tmp_path, official_tiny) -> None:  # noqa: ANN001
    out = tmp_path / "converted"
    rc = main(["convert", "--checkpoint", str(official_tiny / "vqgan_lc_official_format.pth"),
               "--codebook", str(official_tiny / "codebook.pth"), "--config", str(official_tiny / "vq_config.yaml"),
               "--out", str(out)])
    assert rc == 0
    m = VQGANLC.from_pretrained(out)
    assert torch.equal(m.encode(_load(official_tiny, "input.npy")), _load(official_tiny, "indices.npy"))
    assert m.provenance["converted_from"] == "vqgan_lc_official_format.pth"
    rc = main(["convert", "--checkpoint", str(official_tiny / "vqgan_lc_official_format.pth"),
               "--config", str(official_tiny / "vq_config.yaml"), "--inference-only", "--out", str(tmp_path / "inf")])
    assert rc == 0
    mi = VQGANLC.from_pretrained(tmp_path / "inf")
    assert mi.inference_only
    assert torch.equal(mi.encode(_load(official_tiny, "input.npy")), _load(official_tiny, "indices.npy"))


def test_official_codebook_file_reads_safely(official_tiny) -> None:  # noqa: ANN001
    cb = load_codebook(official_tiny / "codebook.pth")
    assert cb.vectors.shape == (1000, 768) and cb.vectors.dtype == torch.float32


def test_wrong_embed_dim_is_refused(official_tiny) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="pass --embed-dim 8"):
        convert_official(official_tiny / "vqgan_lc_official_format.pth", yaml_config=official_tiny / "vq_config.yaml",
                         embed_dim=4)


def test_codebook_of_another_shape_or_other_values_is_refused(tmp_path, official_tiny) -> None:  # noqa: ANN001
    torch.save(torch.randn(500, 768), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"is \(500, 768\) but the checkpoint was trained with a \(1000, 768\)"):
        convert_official(official_tiny / "vqgan_lc_official_format.pth", codebook=tmp_path / "small.pth",
                         yaml_config=official_tiny / "vq_config.yaml")
    torch.save(torch.randn(1000, 768), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="different values"):
        convert_official(official_tiny / "vqgan_lc_official_format.pth", codebook=tmp_path / "other.pth",
                         yaml_config=official_tiny / "vq_config.yaml")


def test_architecture_mismatch_names_the_keys(official_tiny) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="does not fit this vqgan-lc model config"):
        convert_official(official_tiny / "vqgan_lc_official_format.pth", preset="vqgan-lc-f16-100k")


class NotAllowed:
    pass


def test_pickles_needing_other_classes_are_refused(tmp_path) -> None:  # noqa: ANN001
    torch.save({"model": {"w": torch.zeros(1)}, "args": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        convert_official(tmp_path / "evil.pth", preset="tiny")
    torch.save({"model": {"w": torch.zeros(1)}, "extra": collections.OrderedDict(), "args": argparse.Namespace(embed_dim=8)},
               tmp_path / "no_proj.pth")
    with pytest.raises(CheckpointError, match="not a VQGAN-LC checkpoint"):
        convert_official(tmp_path / "no_proj.pth", preset="tiny")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        convert_official(tmp_path / "list.pth", preset="tiny")
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError):
        convert_official(tmp_path / "garbage.pth", preset="tiny")
    (tmp_path / "bad_cb.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CodebookError):
        load_codebook(tmp_path / "bad_cb.pth")


def test_cli_reports_errors_in_one_line(tmp_path, capsys) -> None:  # noqa: ANN001
    rc = main(["convert", "--checkpoint", str(tmp_path / "missing.pth"), "--preset", "tiny", "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


# ----------------------------------------------------------------------------------------- the paper's ablations
def _crafted(tmp_path: Path, name: str, edit) -> Path:  # noqa: ANN001
    """The in-repo official checkpoint with its state dict and args changed by ``edit(state, args)``."""
    state, args = load_official_checkpoint(IN_REPO_FIXTURE / "vqgan_lc_official_format.pth")
    torch.manual_seed(0)
    edit(state, args)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state, "args": argparse.Namespace(**args)}, path)
    return path


def _ids_by_hand(m: VQGANLC, x: torch.Tensor, table: torch.Tensor, *, l2: bool = False) -> torch.Tensor:
    """Nearest row of ``table`` by squared Euclidean distance, re-derived without the package's search."""
    with torch.no_grad():
        z = m.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, table.shape[1])
        if l2:
            z = torch.nn.functional.normalize(z, dim=1)
        d = (z[:, None, :] - table[None]).pow(2).sum(-1)
    return d.argmin(1).reshape(x.shape[0], *m.encode(x).shape[1:])


def test_mlp_projector_checkpoint_converts(tmp_path: Path) -> None:
    def mlp(state: dict, args: dict) -> None:
        for k in ("codebook_projection.weight", "codebook_projection.bias"):
            del state[k]
        state.update({"codebook_projection.0.weight": torch.randn(256, 64) * 0.1,
                      "codebook_projection.0.bias": torch.randn(256) * 0.1,
                      "codebook_projection.2.weight": torch.randn(8, 256) * 0.1,
                      "codebook_projection.2.bias": torch.randn(8) * 0.1})
        args["use_cblinear"] = 2

    path = _crafted(tmp_path, "mlp", mlp)
    m = convert_official(path, yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    assert m.config.quantizer.projector == "mlp" and not m.config.quantizer.codebook_trainable
    st = load_official_checkpoint(path)[0]
    cb = st["tok_embeddings.weight"]
    table = torch.relu(cb @ st["codebook_projection.0.weight"].T + st["codebook_projection.0.bias"]) \
        @ st["codebook_projection.2.weight"].T + st["codebook_projection.2.bias"]
    x = _load(IN_REPO_FIXTURE, "input.npy")
    ids = m.encode(x)
    assert torch.equal(ids, _ids_by_hand(m, x, table)) and ids.unique().numel() > 1
    assert torch.allclose(m.quantize.search_table(), table, atol=1e-6)
    m.save_pretrained(tmp_path / "mlp-inf", inference_only=True)  # the export keeps the MLP's codes
    assert torch.equal(VQGANLC.from_pretrained(tmp_path / "mlp-inf").encode(x), ids)
    bad = _crafted(tmp_path, "liar", lambda s, a: a.update(use_cblinear=2))  # linear weights, args say MLP
    with pytest.raises(CheckpointError, match="use_cblinear=2 means a mlp projector"):
        convert_official(bad, yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")


def test_projector_free_768d_checkpoint_normalises_only_the_latent(tmp_path: Path) -> None:
    def none(state: dict, args: dict) -> None:
        for k in ("codebook_projection.weight", "codebook_projection.bias"):
            del state[k]
        state["tok_embeddings.weight"] = torch.randn(256, 768)  # codes far from unit norm: used raw
        state["quant_conv.weight"], state["quant_conv.bias"] = torch.randn(768, 16, 1, 1), torch.randn(768)
        state["post_quant_conv.weight"] = torch.randn(16, 768, 1, 1) * 0.01
        args.update(use_cblinear=0, embed_dim=768)

    path = _crafted(tmp_path, "none", none)
    m = convert_official(path, yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    q = m.config.quantizer
    assert (q.projector, q.codebook_dim, m.config.embed_dim, q.distance) == ("none", 768, 768, "euclidean")
    cb = load_official_checkpoint(path)[0]["tok_embeddings.weight"]
    x = _load(IN_REPO_FIXTURE, "input.npy")
    ids = m.encode(x)
    assert torch.equal(ids, _ids_by_hand(m, x, cb, l2=True))
    assert not torch.equal(ids, _ids_by_hand(m, x, cb, l2=False))  # the normalisation matters here
    assert not torch.equal(ids, _ids_by_hand(m, x, torch.nn.functional.normalize(cb, dim=1), l2=True))  # not cosine
    with torch.no_grad():
        assert torch.equal(m.quantize.decode(ids).permute(0, 2, 3, 1).reshape(-1, 768), cb[ids.reshape(-1)])


def test_trained_and_random_codebook_checkpoints_convert(tmp_path: Path) -> None:
    official = IN_REPO_FIXTURE / "vqgan_lc_official_format.pth"
    kmeans = load_official_checkpoint(official)[0]["tok_embeddings.weight"]
    torch.save(kmeans, tmp_path / "codebook.pth")
    moved = kmeans + 0.01 * torch.randn_like(kmeans)
    trained = _crafted(tmp_path, "tuned", lambda s, a: (s.update({"tok_embeddings.weight": moved}),
                                                       a.update(tuning_codebook=1)))
    m = convert_official(trained, codebook=tmp_path / "codebook.pth", yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    assert m.config.quantizer.codebook_trainable and isinstance(m.quantize.codebook, torch.nn.Parameter)
    assert torch.equal(m.quantize.codebook.detach(), moved)  # the trained rows, not the k-means file
    with pytest.raises(CheckpointError, match="different values"):  # without the args, a moved codebook is refused
        convert_official(_crafted(tmp_path, "moved", lambda s, a: s.update({"tok_embeddings.weight": moved})),
                         codebook=tmp_path / "codebook.pth", yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    rand = torch.empty(256, 64).uniform_(-1 / 256, 1 / 256)
    frozen = _crafted(tmp_path, "random", lambda s, a: (s.update({"tok_embeddings.weight": rand}),
                                                       a.update(tuning_codebook=-2)))
    m2 = convert_official(frozen, yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    assert not m2.config.quantizer.codebook_trainable and torch.equal(m2.quantize.codebook, rand)
    assert "quantize.codebook" in dict(m2.named_buffers())

    def fc(state: dict, args: dict) -> None:  # random trainable N x D' codebook, no projector: VQGAN-FC
        for k in ("codebook_projection.weight", "codebook_projection.bias"):
            del state[k]
        state["tok_embeddings.weight"] = torch.empty(256, 8).uniform_(-1 / 256, 1 / 256)
        args.update(use_cblinear=0, tuning_codebook=-1)

    m3 = convert_official(_crafted(tmp_path, "fc", fc), yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    assert m3.config.quantizer.kind == "fc" and m3.quantize.embedding.shape == (256, 8)
    with pytest.raises(CheckpointError, match="quantizer_type='sinkhorn'"):
        convert_official(_crafted(tmp_path, "other", lambda s, a: a.update(quantizer_type="sinkhorn")),
                         yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")


def test_official_ema_checkpoint_converts(tmp_path: Path) -> None:
    """models_vq.py with quantizer_type ema: tok_embeddings (N x D') plus the cluster_size / embed_avg Parameters."""
    codes = torch.empty(256, 8).uniform_(-1 / 256, 1 / 256)
    sizes, avg = torch.rand(256) * 5, torch.randn(256, 8) * 0.1

    def ema(state: dict, args: dict) -> None:
        for k in ("codebook_projection.weight", "codebook_projection.bias"):
            del state[k]
        state.update({"tok_embeddings.weight": codes, "cluster_size": sizes, "embed_avg": avg})
        args.update(quantizer_type="ema", use_cblinear=0, tuning_codebook=-1)

    m = convert_official(_crafted(tmp_path, "ema", ema), yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    q = m.config.quantizer
    assert (q.kind, q.codebook_size, q.ema_update) == ("ema", 256, "every_forward")
    assert torch.equal(m.quantize.embedding, codes) and torch.equal(m.quantize.cluster_size, sizes)
    assert torch.equal(m.quantize.embed_avg, avg)
    x = _load(IN_REPO_FIXTURE, "input.npy")
    assert torch.equal(m.encode(x), _ids_by_hand(m, x, codes))
    with pytest.raises(CheckpointError, match="without cluster_size"):
        convert_official(_crafted(tmp_path, "ema-cut", lambda s, a: (ema(s, a), s.pop("cluster_size"))),
                         yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
    with pytest.raises(CheckpointError, match="projector"):  # an EMA run with use_cblinear 1 is not the baseline
        convert_official(_crafted(tmp_path, "ema-proj", lambda s, a: (
            s.update({"cluster_size": sizes, "embed_avg": torch.randn(256, 64)}), a.update(quantizer_type="ema"))),
            yaml_config=IN_REPO_FIXTURE / "vq_config.yaml")
