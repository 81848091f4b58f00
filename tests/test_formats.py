"""The format table: every format describes and opens a real directory (or file) made by the package, the
table agrees with the modules' own format constants, and an unknown version or format is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_digit_tokenizer, tiny_model, write_photo_folder

from vqgan_lc import VQGANLC, FormatVersionError, UnknownFormatError
from vqgan_lc.codebook import Codebook, extract_features, save_codebook
from vqgan_lc.codebook.io import CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION
from vqgan_lc.codebook.store import STORE_FORMAT, STORE_FORMAT_VERSION, FeatureStore
from vqgan_lc.digit import DIGIT_FORMAT, DIGIT_FORMAT_VERSION, DiscriminativeTokenizer
from vqgan_lc.extractors import PixelExtractor
from vqgan_lc.formats import FORMATS, describe, detect, open_path
from vqgan_lc.generate.gpt import GPT, GPT_FORMAT, GPT_FORMAT_VERSION, GPTConfig
from vqgan_lc.mage import MAGE_FORMAT, MAGE_FORMAT_VERSION, MAGEVQGAN, MAGEConfig
from vqgan_lc.metrics import EvaluateOptions, evaluate
from vqgan_lc.metrics.report import REPORT_FORMAT, REPORT_FORMAT_VERSION
from vqgan_lc.model import MODEL_FORMAT, MODEL_FORMAT_VERSION
from vqgan_lc.tokens import EncodeOptions, TokenFile, encode_dataset
from vqgan_lc.tokens.format import TOKENS_FORMAT, TOKENS_FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# name -> (the module's own constants, the type ``open`` returns, the path below the fixture root)
EXPECTED: dict[str, tuple[str, int, type, str]] = {
    MODEL_FORMAT: (MODEL_FORMAT, MODEL_FORMAT_VERSION, VQGANLC, "model"),
    DIGIT_FORMAT: (DIGIT_FORMAT, DIGIT_FORMAT_VERSION, DiscriminativeTokenizer, "digit"),
    GPT_FORMAT: (GPT_FORMAT, GPT_FORMAT_VERSION, GPT, "gpt"),
    TOKENS_FORMAT: (TOKENS_FORMAT, TOKENS_FORMAT_VERSION, TokenFile, "tokens"),
    STORE_FORMAT: (STORE_FORMAT, STORE_FORMAT_VERSION, FeatureStore, "features"),
    REPORT_FORMAT: (REPORT_FORMAT, REPORT_FORMAT_VERSION, dict, "report"),
    CODEBOOK_FORMAT: (CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION, Codebook, "codebook.safetensors"),
    MAGE_FORMAT: (MAGE_FORMAT, MAGE_FORMAT_VERSION, MAGEVQGAN, "mage"),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance of every format, each written by the package's own writer."""
    root = tmp_path_factory.mktemp("formats")
    write_photo_folder(root / "photos", per_class=1, size=64)
    tiny_model().save_pretrained(root / "model")
    tiny_digit_tokenizer().save_pretrained(root / "digit")
    MAGEVQGAN(MAGEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, embed_dim=8, n_embed=16,
                         resolution=32)).save_pretrained(root / "mage")
    GPT(GPTConfig(n_codes=16, grid=(2, 2), n_layer=1, n_head=2, n_embd=16)).save_pretrained(root / "gpt")
    encode_dataset(root / "model", root / "photos", root / "tokens",
                   options=EncodeOptions(image_size=64, batch_size=4, num_workers=0), progress=False)
    extract_features(root / "photos", PixelExtractor(patch_size=8, image_size=32), root / "features", batch_size=4,
                     progress=False)
    evaluate(root / "model", root / "photos", root / "report", options=EvaluateOptions(batch_size=4, num_workers=0),
             progress=False)
    save_codebook(root / "codebook.safetensors", torch.randn(20, 6), {"extractor": "pixels", "mode": "global"})
    return root


def test_the_table_matches_the_modules() -> None:
    assert set(FORMATS) == set(EXPECTED)
    for name, spec in FORMATS.items():
        const, version, _, _ = EXPECTED[name]
        assert spec.name == const and version in spec.versions
    kinds = {name: spec.kind for name, spec in FORMATS.items()}
    assert [n for n, k in kinds.items() if k == "tokenizer"] == [MODEL_FORMAT, DIGIT_FORMAT, MAGE_FORMAT]
    assert (kinds[GPT_FORMAT], kinds[TOKENS_FORMAT], kinds[STORE_FORMAT], kinds[REPORT_FORMAT],
            kinds[CODEBOOK_FORMAT]) == ("prior", "tokens", "features", "report", "codebook")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_format_detects_describes_and_opens_a_real_instance(made: Path, name: str) -> None:
    _, version, cls, where = EXPECTED[name]
    path = made / where
    spec = detect(path)
    assert spec is FORMATS[name]
    d = describe(path)
    assert (d.format, d.version, d.kind) == (name, version, spec.title)
    assert d.fields and f"({'format ' + name}, version {version})" in d.to_text(path).splitlines()[0]
    assert json.loads(json.dumps(d.to_json(path), default=str))["format"] == name
    assert isinstance(open_path(path), cls)


def test_descriptions_hold_the_writers_numbers(made: Path) -> None:
    model = VQGANLC.from_pretrained(made / "model")
    m = describe(made / "model").fields
    assert (m["codebook_size"], m["downsample_factor"], m["image_size"], m["config_hash"]) == \
        (512, 8, 64, model.config_hash())
    t = describe(made / "tokens").fields
    assert (t["rows"], t["grid"], t["codebook_size"], t["config_hash"]) == (3, [8, 8], 512, model.config_hash())
    f = describe(made / "features").fields
    assert (f["images"], f["grid"], f["dim"], f["features"]) == (3, [4, 4], 192, 48)
    r = describe(made / "report").fields
    report = json.loads((made / "report" / "report.json").read_text())
    assert (r["images"], r["config_hash"]) == (3, model.config_hash())
    assert r["psnr_y"] == report["metrics"]["psnr_y"]["value"] and 0 < r["psnr_y"] < 100
    c = describe(made / "codebook.safetensors").fields
    assert (c["codebook_size"], c["dim"], c["extractor"]) == (20, 6, "pixels")


def _rewrite_version(path: Path, version: object, fmt: str | None = None) -> None:
    """Set the recorded format version (and name) of a directory's record or a codebook file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta["format_version"] = str(version)
        if fmt is not None:
            meta["format"] = fmt
        save_file(tensors, str(path), metadata=meta)
        return
    record = next(path / r for r in ("config.json", "manifest.json", "report.json") if (path / r).is_file())
    meta = json.loads(record.read_text())
    meta["format_version"] = version
    if fmt is not None:
        meta["format"] = fmt
    record.write_text(json.dumps(meta))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_an_unknown_version_or_format_is_one_sentence(made: Path, tmp_path: Path, name: str) -> None:
    import shutil

    src = made / EXPECTED[name][3]
    path = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, path)
    _rewrite_version(path, 99)
    with pytest.raises(FormatVersionError) as e:
        describe(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("upgrade vqgan-lc to read it.")
    assert f"is a {FORMATS[name].title} of format version 99 ({name}), but this vqgan-lc reads only version 1" in msg

    _rewrite_version(path, 1, fmt="vqgan-lc-something-newer")
    with pytest.raises(UnknownFormatError) as e:
        describe(path)
    assert "\n" not in str(e.value) and "'vqgan-lc-something-newer'" in str(e.value)
