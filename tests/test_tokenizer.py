"""The front door: ``Tokenizer``/``DecodingTokenizer`` protocols, ``load_tokenizer`` on every kind, save -> load round
trips (same ids, same config hash), the preprocessing block, provenance set in constructors, and old
directories written before the block existed."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from conftest import photo_crops, tiny_digit_tokenizer, tiny_model, write_photo_folder

from vqgan_lc import VQGANLC, CheckpointError, FormatVersionError, ImageShapeError
from vqgan_lc.cli.main import main
from vqgan_lc.data import Preprocessing, list_images, load_rgb
from vqgan_lc.digit import DiscriminativeTokenizer
from vqgan_lc.generate import GPT, GPTConfig
from vqgan_lc.mage import MAGEVQGAN
from vqgan_lc.pretrained import PretrainedMixin
from vqgan_lc.tokenizer import (
    DecodingTokenizer,
    Tokenizer,
    check_preprocessing,
    default_preprocessing,
    load_tokenizer,
    tokenizer_identity,
)
from vqgan_lc.tokens import open_tokens

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizer")
    tiny_model().save_pretrained(root / "model")
    tiny_digit_tokenizer().save_pretrained(root / "digit")
    GPT(GPTConfig(n_codes=8, grid=(2, 2), n_layer=1, n_head=1, n_embd=8)).save_pretrained(root / "gpt")
    return {"root": root, "model": root / "model", "digit": root / "digit", "gpt": root / "gpt"}


# ----------------------------------------------------------------------------------------- the protocols
def test_both_tokenizers_satisfy_the_protocol_and_only_vqgan_lc_decodes() -> None:
    model, digit = tiny_model(), tiny_digit_tokenizer()
    assert isinstance(model, Tokenizer) and isinstance(model, DecodingTokenizer)
    assert isinstance(digit, Tokenizer) and not isinstance(digit, DecodingTokenizer)
    gpt = GPT(GPTConfig(n_codes=8, grid=(2, 2), n_layer=1, n_head=1, n_embd=8))
    assert not isinstance(gpt, Tokenizer)
    assert (model.kind, digit.kind) == ("vqgan-lc", "digit")
    # tiny preset: f8, 64 px; DiGIT: a fixed 16 x 16 grid of 224 / 14 patches at the 256 px load size
    assert (model.codebook_size, model.downsample_factor, model.latent_shape(64), model.latent_shape(64, 128)) == \
        (512, 8, (8, 8), (8, 16))
    assert (digit.codebook_size, digit.downsample_factor, digit.latent_shape(256), digit.latent_shape(512)) == \
        (32, 16, (16, 16), (16, 16))
    assert tokenizer_identity(model) == {"kind": "vqgan-lc", "config_hash": model.config_hash(),
                                         "codebook_size": 512, "downsample_factor": 8}
    assert tokenizer_identity(digit)["kind"] == "digit"


def test_pretrained_classes_share_one_from_pretrained_signature() -> None:
    expected = ["path", "map_location", "revision", "cache_dir", "local_files_only", "token"]
    for cls in (VQGANLC, GPT, DiscriminativeTokenizer, MAGEVQGAN):
        assert issubclass(cls, PretrainedMixin)
        assert cls.from_pretrained.__func__ is PretrainedMixin.from_pretrained.__func__  # one implementation
        params = inspect.signature(cls.from_pretrained).parameters
        assert list(params) == expected
        assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in expected[1:])
    # DiGIT's save_pretrained takes exactly its arguments: VQGANLC's inference_only is refused, not swallowed
    assert list(inspect.signature(DiscriminativeTokenizer.save_pretrained).parameters) == \
        ["self", "directory", "embed_weights", "provenance", "push_to_hub", "repo_id", "token"]
    with pytest.raises(TypeError):
        tiny_digit_tokenizer().save_pretrained("unused", inference_only=True)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------------------- load_tokenizer
def test_load_tokenizer_opens_each_kind_and_refuses_the_rest(dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_tokenizer(dirs["model"])
    assert type(model) is VQGANLC and not model.training
    assert model.config_hash() == tiny_model().config_hash()
    assert type(load_tokenizer(dirs["model"] / "config.json")) is VQGANLC  # the record file means its directory
    digit = load_tokenizer(dirs["digit"])
    assert type(digit) is DiscriminativeTokenizer and digit.config_hash() == tiny_digit_tokenizer().config_hash()

    with pytest.raises(CheckpointError, match=r"is a GPT directory, not a tokenizer directory"):
        load_tokenizer(dirs["gpt"])
    with pytest.raises(CheckpointError, match=r"nowhere does not exist\."):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a config.json nor a manifest.json"):
        load_tokenizer(tmp_path / "empty")
    cfg = json.loads((dirs["model"] / "config.json").read_text())
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(FormatVersionError, match="format version 99"):
        load_tokenizer(tmp_path / "newer")


# ----------------------------------------------------------------------------------------- round trips
def test_vqgan_lc_round_trip_keeps_ids_hash_provenance_and_preprocessing(tmp_path: Path) -> None:
    pre = {**default_preprocessing(64), "image_size": 48}
    model = tiny_model()
    model = VQGANLC(model.config, provenance={"note": "from a test"}, preprocessing=pre)
    torch.manual_seed(0)
    model.quantize.set_codebook(torch.randn(512, 768) * 0.03)
    model.eval()
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["preprocessing"] == {"image_size": 48, "resize": "shorter-side", "interpolation": "bicubic",
                                     "crop": "center", "range": [-1, 1], "orientation": "exif", "alpha": "white"}
    assert meta["provenance"] == {"note": "from a test"} and meta["weights"] == "full"
    back = load_tokenizer(tmp_path / "m")
    assert back.preprocessing == meta["preprocessing"] and back.provenance == {"note": "from a test"}
    x = photo_crops(64, 3, seed=3)
    assert back.config_hash() == model.config_hash()
    assert torch.equal(back.encode(x), model.encode(x))
    # the preprocessing property is a copy: changing it changes nothing
    back.preprocessing["image_size"] = 1
    assert back.preprocessing["image_size"] == 48

    # the inference-only export keeps preprocessing and provenance, and its ids
    model.save_pretrained(tmp_path / "inf", inference_only=True)
    inf = load_tokenizer(tmp_path / "inf")
    assert inf.inference_only and inf.preprocessing["image_size"] == 48 and inf.provenance == {"note": "from a test"}
    assert torch.equal(inf.encode(x), model.encode(x))
    inf.save_pretrained(tmp_path / "inf2")  # an inference-only model saves as one
    assert json.loads((tmp_path / "inf2" / "config.json").read_text())["weights"] == "inference"


def test_provenance_is_a_constructor_argument(tmp_path: Path) -> None:
    cfg = tiny_model().config
    m = VQGANLC.from_config(cfg, torch.randn(512, 768), provenance={"codebook": {"file": "cb.safetensors"}})
    assert m.provenance == {"codebook": {"file": "cb.safetensors"}}
    assert VQGANLC(cfg).provenance == {} and GPT(GPTConfig(n_codes=4, grid=(1, 1), n_layer=1, n_head=1,
                                                              n_embd=8)).provenance == {}
    # save_pretrained(provenance=...) records another provenance without changing the object's
    m.save_pretrained(tmp_path / "m", provenance={"training": {"generator_steps": 3}})
    assert VQGANLC.from_pretrained(tmp_path / "m").provenance == {"training": {"generator_steps": 3}}
    assert m.provenance == {"codebook": {"file": "cb.safetensors"}}


def test_digit_round_trip_records_preprocessing_and_provenance(tmp_path: Path) -> None:
    tok = tiny_digit_tokenizer()
    tok.provenance = {"built_by": "a test"}  # the declared attribute may be updated before saving
    tok.save_pretrained(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "config.json").read_text())
    assert meta["preprocessing"] == default_preprocessing(256) and meta["provenance"] == {"built_by": "a test"}
    back = load_tokenizer(tmp_path / "d")
    assert back.preprocessing == default_preprocessing(256) and back.provenance == {"built_by": "a test"}
    x = photo_crops(256, 2, seed=4)
    assert back.config_hash() == tok.config_hash() == meta["config_hash"]
    assert torch.equal(back.encode(x), tok.encode(x))


# ----------------------------------------------------------------------------------------- old directories
def test_old_directories_without_the_block_load_with_the_default(dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    for name in ("model", "digit"):
        shutil.copytree(dirs[name], tmp_path / name)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        del cfg["preprocessing"]
        if name == "digit":
            del cfg["provenance"]  # version-1 DiGIT directories had neither
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    model = load_tokenizer(tmp_path / "model")
    assert model.preprocessing == default_preprocessing(64) == default_preprocessing(model.config.resolution)
    digit = load_tokenizer(tmp_path / "digit")
    assert digit.preprocessing == default_preprocessing(256) and digit.provenance == {}
    x = photo_crops(64, 2, seed=5)
    assert torch.equal(model.encode(x), load_tokenizer(dirs["model"]).encode(x))


def test_a_bad_preprocessing_block_is_one_sentence(dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    shutil.copytree(dirs["model"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["preprocessing"] = {"image_size": 0}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="invalid preprocessing block: preprocessing image_size must be a "
                                              "positive integer, got 0"):
        load_tokenizer(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        check_preprocessing({"image_size": 64, "flip": True})
    with pytest.raises(ValueError, match="range"):
        check_preprocessing({"image_size": 64, "range": [1, -1]})
    assert check_preprocessing({"image_size": 32}) == default_preprocessing(32)


# ----------------------------------------------------------------------------------------- reproducing encode
def test_tok_encode_with_the_recorded_preprocessing_reproduces_vqgan_lc_encode(tmp_path: Path) -> None:
    """``vqgan-lc encode`` without --image-size uses the tokenizer's preprocessing; preparing the same files
    by that record and calling ``tok.encode`` gives the stored ids."""
    write_photo_folder(tmp_path / "photos", per_class=1, size=90)
    base = tiny_model()
    model = VQGANLC(base.config, preprocessing=default_preprocessing(48))
    model.load_state_dict(base.state_dict())
    model.eval().save_pretrained(tmp_path / "m")
    assert main(["encode", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "photos"), "--out",
                 str(tmp_path / "tok"), "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]) == 0
    tokens = open_tokens(tmp_path / "tok")
    assert tokens.manifest["preprocessing"]["image_size"] == 48 and tokens.grid == (6, 6)

    tok = load_tokenizer(tmp_path / "m")
    pre = tok.preprocessing
    assert (pre["resize"], pre["interpolation"], pre["crop"], pre["range"]) == ("shorter-side", "bicubic", "center",
                                                                                 [-1, 1])
    size = pre["image_size"]
    images = list_images(tmp_path / "photos")
    prepare = Preprocessing(size)
    x = torch.stack([prepare(load_rgb(images.root / p)) for p in tokens.paths])
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(tok.encode(x), torch.from_numpy(tokens[:].astype("int64")))


def test_tok_preprocess_gives_the_pixels_and_ids_of_vqgan_lc_encode(tmp_path: Path) -> None:
    """``tok.preprocess`` (PIL images or uint8 arrays) prepares exactly what the dataset encoder prepares."""
    import numpy as np
    from PIL import Image

    write_photo_folder(tmp_path / "photos", per_class=1, size=90)
    base = tiny_model()
    model = VQGANLC(base.config, preprocessing=default_preprocessing(48))
    model.load_state_dict(base.state_dict())
    model.eval().save_pretrained(tmp_path / "m")
    assert main(["encode", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "photos"), "--out",
                 str(tmp_path / "tok"), "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]) == 0
    tokens = open_tokens(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "m")
    root = list_images(tmp_path / "photos").root
    pil = [load_rgb(root / p) for p in tokens.paths]
    x = tok.preprocess(pil)
    assert x.shape == (len(pil), 3, 48, 48) and x.dtype == torch.float32
    assert torch.equal(x, torch.stack([Preprocessing(48)(im) for im in pil]))
    assert torch.equal(tok.preprocess([np.asarray(im) for im in pil]), x)
    assert torch.equal(tok.preprocess(pil[0]), x[:1])
    assert torch.equal(tok.encode(x), torch.from_numpy(tokens[:].astype("int64")))
    with pytest.raises(ImageShapeError, match="uint8"):
        tok.preprocess(np.zeros((8, 8, 3), dtype=np.float32))
    gray = Image.fromarray(np.full((60, 50), 128, dtype=np.uint8))
    assert tok.preprocess(gray).shape == (1, 3, 48, 48)
