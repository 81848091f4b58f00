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
from vqgan_lc.convert import convert_official

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
