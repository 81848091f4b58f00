"""MAGE's VQGAN (DiGIT's stage-2 pixel tokenizer): architecture, conversion and the directory format.

The golden fixture (../shared/fixtures/mage-vqgan-tiny: outputs of the official MAGE code on a tiny
random model) is used where present; the random-model tests run in any clone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.convert_mage import convert_mage, infer_mage_config, load_mage_checkpoint, mage_config_from_yaml
from vqgan_lc.data import Preprocessing, list_images, load_rgb
from vqgan_lc.errors import CheckpointError, FormatVersionError, ImageShapeError, TokenRangeError
from vqgan_lc.mage import MAGE_FORMAT, MAGEVQGAN, MAGEConfig
from vqgan_lc.quantize.search import full_matrix_nearest_code
from vqgan_lc.tokenizer import DecodingTokenizer, load_tokenizer
from vqgan_lc.tokens import EncodeOptions, encode_dataset, open_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parents[1].parent / "shared" / "fixtures" / "mage-vqgan-tiny"
TINY = MAGEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16, n_embed=64, resolution=32)


@pytest.fixture(scope="module")
def fx() -> Path:
    if not (FIXTURE / "vqgan_tiny.ckpt").is_file():
        pytest.skip(f"golden fixture not found at {FIXTURE} (it ships beside the repo in CI only)")
    return FIXTURE


def _npy(fx: Path, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(fx / name))


@pytest.fixture(scope="module")
def converted(fx: Path) -> MAGEVQGAN:
    return convert_mage(fx / "vqgan_tiny.ckpt")


def _random_model(seed: int = 0, config: MAGEConfig = TINY) -> MAGEVQGAN:
    torch.manual_seed(seed)
    m = MAGEVQGAN(config)
    with torch.no_grad():  # spread the codebook so that many codes are used
        m.quantize.embedding.weight.normal_(0.0, 0.5)
    return m.eval()


def _images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------ architecture
def test_full_size_model_has_the_release_keys_and_shapes(fx: Path) -> None:
    expected = json.loads((fx / "official_full_size_state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = MAGEVQGAN(MAGEConfig())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 168
    assert got == expected
    assert list(got) == list(expected)


def test_full_size_model_has_the_release_parameter_count() -> None:
    with torch.device("meta"):
        model = MAGEVQGAN(MAGEConfig())
    assert sum(p.numel() for p in model.parameters()) == 54_515_587
    assert model.downsample_factor == 16 and model.codebook_size == 1024
    assert model.latent_shape(256, 256) == (16, 16)
    assert not any("attn" in k or "quant_conv" in k or "downsample" in k for k in model.state_dict())


def test_tiny_fixture_keys_load_strictly(fx: Path) -> None:
    keys = json.loads((fx / "state_dict_keys.json").read_text())
    model = MAGEVQGAN(mage_config_from_yaml(fx / "config.json"))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    assert len(keys) == 108


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="must equal embed_dim"):
        MAGEConfig(z_channels=128, embed_dim=256)
    with pytest.raises(ValueError, match="multiple of 32"):
        MAGEConfig(ch=48)
    assert MAGEConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown MAGE config keys: attn"):
        MAGEConfig.from_dict({**TINY.to_dict(), "attn": 1})


# ------------------------------------------------------------------ the golden fixture
def test_ids_latents_and_reconstructions_equal_the_official_code(converted: MAGEVQGAN, fx: Path) -> None:
    x01 = _npy(fx, "input.npy")
    expected = json.loads((fx / "expected.json").read_text())
    x = 2 * x01 - 1
    with torch.no_grad():
        z = converted.encode_latents(x)
        out = converted(x)
        ids = converted.encode(x)
        from_ids = converted.decode(ids)
    assert z.shape == (4, 32, 8, 8)
    assert (z - _npy(fx, "pre_quant_latent.npy")).abs().max() < 1e-4
    assert ids.dtype == torch.int64 and ids.shape == (4, 8, 8)
    assert torch.equal(ids, _npy(fx, "indices.npy"))
    assert torch.equal(out.ids, ids)
    assert int(ids.unique().numel()) == expected["n_unique_ids"] == 184
    assert (out.z_q - _npy(fx, "quantized_latent.npy")).abs().max() < 1e-4
    assert (converted.ids_to_latents(ids) - _npy(fx, "quantized_latent.npy")).abs().max() < 1e-4
    # compared in the official [0, 1] pixel space
    assert ((out.reconstruction + 1) / 2 - _npy(fx, "reconstruction.npy")).abs().max() < 1e-3
    assert ((from_ids + 1) / 2 - _npy(fx, "reconstruction_from_indices.npy")).abs().max() < 1e-3
    assert abs(float(out.loss) - expected["quantizer_loss_eval"]) < 1e-5


def test_inferred_config_equals_the_yaml_config(fx: Path) -> None:
    state = load_mage_checkpoint(fx / "vqgan_tiny.ckpt")
    from_yaml = mage_config_from_yaml(fx / "config.json")
    dd = json.loads((fx / "config.json").read_text())["model"]["params"]["ddconfig"]
    assert from_yaml == MAGEConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32, embed_dim=32,
                                   n_embed=512, resolution=dd["resolution"])
    assert infer_mage_config(state, resolution=128) == from_yaml
    assert infer_mage_config(state).resolution == 256  # the release's, when nothing says otherwise
    assert convert_mage(fx / "vqgan_tiny.ckpt", resolution=128).config == from_yaml


def test_yaml_path_converts_to_the_same_model(fx: Path, converted: MAGEVQGAN, tmp_path: Path) -> None:
    doc = json.loads((fx / "config.json").read_text())
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(doc))
    model = convert_mage(fx / "vqgan_tiny.ckpt", yaml_config=tmp_path / "vqgan.yaml")
    assert model.config.resolution == 128 and model.preprocessing["image_size"] == 128
    assert model.provenance["config_from"] == "vqgan.yaml"
    for (k, a), (k2, b) in zip(model.state_dict().items(), converted.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_a_yaml_that_disagrees_with_the_checkpoint_names_the_keys(fx: Path, tmp_path: Path) -> None:
    doc = json.loads((fx / "config.json").read_text())
    doc["model"]["params"]["n_embed"] = 1024
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight: file \(512, 32\) vs model \(1024, 32\)"):
        convert_mage(fx / "vqgan_tiny.ckpt", yaml_config=tmp_path / "wrong.yaml")
    doc["model"]["params"]["n_embed"] = 512
    doc["model"]["params"]["ddconfig"]["double_z"] = True
    (tmp_path / "kl.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="double_z"):
        convert_mage(fx / "vqgan_tiny.ckpt", yaml_config=tmp_path / "kl.yaml")
    (tmp_path / "empty.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError, match="model.params"):
        convert_mage(fx / "vqgan_tiny.ckpt", yaml_config=tmp_path / "empty.yaml")


def test_wrong_checkpoints_give_one_sentence(fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.load(fx / "vqgan_tiny.ckpt", weights_only=True)
    missing = dict(state)
    del missing["decoder.conv_out.bias"]
    torch.save(missing, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e\.g\. decoder\.conv_out\.bias\)"):
        convert_mage(tmp_path / "missing.ckpt")
    torch.save({**state, "loss.discriminator.weight": torch.zeros(1)}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(e\.g\. loss\.discriminator\.weight\)"):
        convert_mage(tmp_path / "extra.ckpt")
    torch.save({"quant_conv.weight": torch.zeros(1), "encoder.mid.attn_1.q.weight": torch.zeros(1)},
               tmp_path / "taming.ckpt")
    with pytest.raises(CheckpointError, match="--format vqgan-lc"):
        convert_mage(tmp_path / "taming.ckpt")
    torch.save({"state_dict": missing}, tmp_path / "wrapped.ckpt")  # unwrapped as MAGE's loader does
    with pytest.raises(CheckpointError, match="missing keys"):
        convert_mage(tmp_path / "wrapped.ckpt")

    out = tmp_path / "o"
    rc = main(["convert", "--format", "mage", "--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(out)])
    assert rc == 1 and not out.exists()
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO " not in line]
    assert len(err) == 1 and err[0].startswith("vqgan-lc convert: error:") and "decoder.conv_out.bias" in err[0]


def test_cli_converts_with_and_without_a_config(fx: Path, converted: MAGEVQGAN, tmp_path: Path) -> None:
    x = 2 * _npy(fx, "input.npy") - 1
    for name, extra in (("inferred", []), ("yaml", ["--config", str(fx / "config.json")])):
        out = tmp_path / name
        rc = main(["convert", "--format", "mage", "--checkpoint", str(fx / "vqgan_tiny.ckpt"), *extra, "--out", str(out)])
        assert rc == 0
        meta = json.loads((out / "config.json").read_text())
        assert meta["format"] == MAGE_FORMAT == "vqgan-lc-mage" and meta["format_version"] == 1
        assert meta["kind"] == "mage-vqgan"
        assert meta["provenance"]["checkpoint_sha256"] == json.loads((fx / "expected.json").read_text())["checkpoint"]["sha256"]
        model = MAGEVQGAN.from_pretrained(out)
        assert torch.equal(model.encode(x), _npy(fx, "indices.npy"))
        assert model.config.resolution == (256 if name == "inferred" else 128)


# ------------------------------------------------------------------ any clone: a random tiny model
def test_random_model_round_trip_through_a_directory(tmp_path: Path) -> None:
    model = _random_model()
    x = _images()
    with torch.no_grad():
        ids = model.encode(x)
        rec = model.decode(ids)
    assert ids.shape == (2, 16, 16) and ids.dtype == torch.int64
    assert int(ids.unique().numel()) > 8
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MAGEVQGAN.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and loaded.config_hash() == model.config_hash()
    assert not loaded.training
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), rec)
    for (k, a), (k2, b) in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_load_tokenizer_and_info_know_the_mage_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _random_model(seed=2)
    model.save_pretrained(tmp_path / "m", provenance={"converted_from": "x.ckpt"})
    tok = load_tokenizer(tmp_path / "m")
    assert isinstance(tok, MAGEVQGAN) and tok.provenance == {"converted_from": "x.ckpt"}
    x = _images()
    assert torch.equal(tok.encode(x), model.encode(x))
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "MAGE VQGAN directory" in out and "vqgan-lc-mage" in out and model.config_hash() in out


def test_random_model_converts_from_a_release_format_file(tmp_path: Path) -> None:
    model = _random_model(seed=3)
    torch.save(model.state_dict(), tmp_path / "flat.ckpt")
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, tmp_path / "wrapped.ckpt")
    x = _images(seed=4)
    ids = model.encode(x)
    for name in ("flat.ckpt", "wrapped.ckpt"):
        conv = convert_mage(tmp_path / name, resolution=32)
        assert conv.config == TINY
        assert torch.equal(conv.encode(x), ids)


def test_ids_are_the_nearest_codes_and_io_ranges_are_minus_one_to_one() -> None:
    model = _random_model(seed=5)
    x = _images(seed=6)
    with torch.no_grad():
        z = model.encode_latents(x)
        out = model(x)
        direct = model.encoder((x + 1) / 2)  # the network itself works in [0, 1]
        dec = model.decoder(model.ids_to_latents(out.ids))
        d = (model.quantize.lookup(out.ids) - z).pow(2).mean()
    assert torch.equal(z, direct)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    assert torch.equal(out.ids.reshape(-1), full_matrix_nearest_code(flat, model.quantize.embedding.weight))
    assert torch.allclose(model.decode(out.ids), dec * 2 - 1, atol=1e-6)
    assert torch.allclose(out.reconstruction, model.decode(out.ids), atol=1e-5)
    assert float(out.loss) == pytest.approx(1.25 * float(d), rel=1e-5)


def test_tokenizer_interface() -> None:
    model = _random_model()
    assert model.kind == "mage-vqgan" and isinstance(model, DecodingTokenizer)
    assert model.preprocessing == {"image_size": 32, "resize": "shorter-side", "interpolation": "bicubic",
                                   "crop": "center", "range": [-1, 1], "orientation": "exif", "alpha": "white"}
    assert model.downsample_factor == 2 and model.latent_shape(64, 48) == (32, 24)
    assert model.codebook_size == 64
    other = MAGEVQGAN(TINY.replace(n_embed=128))
    assert len(model.config_hash()) == 16 and model.config_hash() != other.config_hash()


def test_bad_inputs_raise_package_errors() -> None:
    model = _random_model()
    with pytest.raises(ImageShapeError, match="multiple of the downsampling factor 2"):
        model.encode(torch.zeros(1, 3, 31, 32))
    with pytest.raises(ImageShapeError, match="floats"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TokenRangeError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(TokenRangeError, match="integers"):
        model.decode(torch.zeros(1, 4, 4))


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    _random_model().save_pretrained(tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(FormatVersionError, match=r"format_version 2; this vqgan-lc reads version 1\. Upgrade"):
        MAGEVQGAN.from_pretrained(tmp_path / "m")
    cfg.write_text(json.dumps({**meta, "format": "vqgan-lc-model"}))
    with pytest.raises(CheckpointError, match="is not a MAGE VQGAN model config"):
        MAGEVQGAN.from_pretrained(tmp_path / "m")


class NotAllowed:
    """A class no weights-only load may construct."""


def test_unsafe_or_malformed_checkpoints_are_refused(tmp_path: Path) -> None:
    torch.save({"encoder.conv_in.weight": NotAllowed()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        convert_mage(tmp_path / "evil.ckpt")
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        convert_mage(tmp_path / "list.ckpt")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        convert_mage(tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_mage(tmp_path / "absent.ckpt")


def test_cli_rejects_vqgan_lc_options_with_mage_and_keeps_the_vqgan_lc_requirement(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["convert", "--format", "mage", "--checkpoint", "x.ckpt", "--preset", "tiny", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--preset apply to --format vqgan-lc only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", "--checkpoint", "x.pth", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--config --preset is required" in capsys.readouterr().err


def test_the_dataset_encoder_takes_a_mage_model(tmp_path: Path) -> None:
    write_photo_folder(tmp_path / "photos", per_class=2)
    model = _random_model(seed=8)
    opts = EncodeOptions(image_size=32, batch_size=4, num_workers=0, shard_size=4)
    manifest = encode_dataset(model, tmp_path / "photos", tmp_path / "tok", options=opts, progress=False)
    assert manifest["grid"] == [16, 16]
    assert manifest["tokenizer"] == {"kind": "mage-vqgan", "config_hash": model.config_hash(), "codebook_size": 64,
                                     "downsample_factor": 2}
    images = list_images(tmp_path / "photos")
    pre = Preprocessing(32)
    x = torch.stack([pre(load_rgb(tmp_path / "photos" / p)) for p in images.paths])
    assert float(x.min()) < -0.5 and float(x.max()) > 0.5  # the pipeline feeds [-1, 1]
    expected = model.encode(x).numpy()
    assert np.array_equal(open_tokens(tmp_path / "tok")[:].astype(np.int64), expected)
    assert len(np.unique(expected)) > 5
