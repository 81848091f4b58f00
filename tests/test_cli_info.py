"""`vqgan-lc info` on every format: tiny random-weight instances, the printed sizes checked against the
objects that wrote them, and one sentence for an unknown path or format version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_DINOV2_ARCH, tiny_digit_tokenizer, tiny_model, write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.codebook import extract_features, save_codebook
from vqgan_lc.digit import DiscriminativeTokenizer
from vqgan_lc.extractors import PixelExtractor
from vqgan_lc.generate import GPT, GPTConfig
from vqgan_lc.tokens import EncodeOptions, encode_dataset

ARCH = TINY_DINOV2_ARCH


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def info(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    """Run ``vqgan-lc info ARGS``; the title line under ``title`` and every ``key: value`` line."""
    assert main(["info", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    out = {"title": lines[0]}
    for line in lines[1:]:
        m = re.match(r"^\s+([^:]+):\s+(.*)$", line)
        assert m, line
        out[m.group(1)] = m.group(2)
    return out


def info_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``vqgan-lc info ARGS`` expecting exit status 1; returns the one error line."""
    assert main(["info", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgan-lc info: error: ") and "\n" not in err
    return err


def bump_version(file: Path) -> None:
    meta = json.loads(file.read_text())
    meta["format_version"] = 99
    file.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------------- GPT
def test_gpt_directory_sizes_conditioning_and_parameters(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    g = GPT(GPTConfig(n_codes=32, grid=(4, 4), n_classes=5, n_layer=2, n_head=4, n_embd=64))
    g.save_pretrained(tmp_path / "gpt", provenance={"steps": 12, "final_loss": 2.5})
    out = info(capsys, str(tmp_path / "gpt"))
    assert out["title"] == f"{tmp_path / 'gpt'}: GPT directory (format vqgan-lc-gpt, version 1)"
    n = g.num_parameters()
    assert n == sum(p.numel() for p in g.parameters()) and n > 100_000
    assert out["parameters"] == f"{n:,} ({n / 1e6:.2f}M)"
    assert (out["vocab size"], out["input vocab"], out["grid"], out["sequence length"]) == ("32", "38", "4 x 4", "16")
    assert (out["layers"], out["heads"], out["width"], out["classes"]) == ("2", "4", "64", "5")
    assert out["conditioning"] == "class-conditional, 5 classes, null class (CFG)"
    assert (out["dtype"], out["tied head"], out["trained steps"], out["final loss"]) == ("float32", "no", "12", "2.5")

    # DiGIT stage 2 shape: unconditional, prefix of DiGIT ids, tied head (no head.weight)
    torch.manual_seed(0)
    g2 = GPT(GPTConfig(n_codes=32, grid=(4, 4), prefix_vocab=7, prefix_grid=(2, 3), n_layer=1, n_head=2,
                       n_embd=32, tie_weights=True))
    g2.save_pretrained(tmp_path / "gpt2")
    j = info_json(capsys, str(tmp_path / "gpt2"))
    assert (j["kind"], j["format"], j["format_version"]) == ("GPT directory", "vqgan-lc-gpt", 1)
    assert j["parameters"].startswith(f"{g2.num_parameters():,} ")
    assert j["conditioning"] == "unconditional; prefix of 6 ids in [0, 7)"
    assert (j["prefix_vocab"], j["prefix_grid"], j["input_vocab"], j["tied_head"]) == (7, [2, 3], 33, True)
    assert j["details"]["config"] == g2.config.to_dict()

    # weights that do not fit config.json, an unknown version
    cfg = json.loads((tmp_path / "gpt" / "config.json").read_text())
    cfg["config"]["n_embd"] = 128
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(cfg))
    assert "does not fit its config.json" in refused(capsys, str(tmp_path / "gpt2"))
    bump_version(tmp_path / "gpt" / "config.json")
    err = refused(capsys, str(tmp_path / "gpt"))
    assert "is a GPT directory of format version 99 (vqgan-lc-gpt), but this vqgan-lc reads only version 1" in err


# ----------------------------------------------------------------------------------------- DiGIT
def _digit_tokenizer(k: int = 32) -> DiscriminativeTokenizer:
    return tiny_digit_tokenizer(k)


def test_digit_directory_backbone_layer_k_and_weights(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    tok = _digit_tokenizer()
    tok.save_pretrained(tmp_path / "digit")  # no source file: the weights are embedded
    out = info(capsys, str(tmp_path / "digit"))
    assert out["title"].endswith("DiGIT tokenizer directory (format vqgan-lc-digit, version 1)")
    assert (out["backbone"], out["layer"], out["k"], out["dim"]) == (ARCH, "-3 (block 3 of 6)", "32", "48")
    assert (out["grid"], out["load size"], out["image size"]) == ("16 x 16", "256", "224")
    n = sum(p.numel() for p in tok.extractor.model.state_dict().values())
    assert out["weights"] == f"embedded (extractor.safetensors, {n:,} ({n / 1e6:.2f}M) parameters)"
    assert out["config hash"] == tok.config_hash()

    # a referenced weights file: present, then missing
    from safetensors.torch import save_file

    wfile = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tok.extractor.model.state_dict().items()}, str(wfile))
    cfg = json.loads((tmp_path / "digit" / "config.json").read_text())
    cfg["extractor"].update(embedded=False, weights=str(wfile))
    (tmp_path / "digit" / "config.json").write_text(json.dumps(cfg))
    assert info(capsys, str(tmp_path / "digit"))["weights"] == f"{wfile} (present)"
    wfile.unlink()
    assert info(capsys, str(tmp_path / "digit"))["weights"] == f"{wfile} (missing here)"

    bump_version(tmp_path / "digit" / "config.json")
    assert "is a DiGIT tokenizer directory of format version 99" in refused(capsys, str(tmp_path / "digit"))


# ----------------------------------------------------------------------------------------- feature store
def test_feature_store_counts_and_dim(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    write_photo_folder(tmp_path / "photos", per_class=2, size=40)
    (tmp_path / "photos" / "class_0_astronaut" / "broken.jpg").write_bytes(b"not a jpeg")
    ext = PixelExtractor(patch_size=8, image_size=32)
    store = extract_features(tmp_path / "photos", ext, tmp_path / "feats", pool=2, dtype="float16", shard_size=4,
                             batch_size=2, progress=False)
    out = info(capsys, str(tmp_path / "feats"))
    assert out["title"].endswith("feature store (format vqgan-lc-features, version 1)")
    # 7 sources, 1 unreadable; 32 px / patch 8 = 4 x 4 grid, pooled 2 x 2 -> 2 x 2 of 8*8*3 = 192-d vectors
    assert (out["sources"], out["images"], out["skipped"], out["classes"]) == ("7", "6", "1", "3")
    assert (out["grid"], out["dim"], out["features"]) == ("2 x 2", "192", "24")
    assert store.num_vectors == 24 and store.dim == 192
    assert (out["extractor"], out["model"], out["pool"], out["dtype"]) == ("pixels", "rgb-patch8", "2", "float16")
    assert (out["bytes"], out["shards"], out["complete"]) == (f"{24 * 192 * 2:,}", "2 of 2", "yes")

    bump_version(tmp_path / "feats" / "manifest.json")
    assert "is a feature store of format version 99" in refused(capsys, str(tmp_path / "feats"))


# ----------------------------------------------------------------------------------------- model, tokens, codebook
def test_model_tokens_and_codebook(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    out = info(capsys, str(tmp_path / "model"))
    assert out["title"].endswith("model directory (format vqgan-lc-model, version 1)")
    assert (out["quantizer"], out["codebook size"], out["codebook dim"]) == ("lc", "512", "768")
    assert out["config hash"] == model.config_hash() and out["weights"] == "full"
    # `info DIR/config.json` describes the directory
    assert info(capsys, str(tmp_path / "model" / "config.json"))["config hash"] == model.config_hash()

    write_photo_folder(tmp_path / "photos", per_class=2, size=72)
    encode_dataset(tmp_path / "model", tmp_path / "photos", tmp_path / "tok",
                   options=EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4), progress=False)
    out = info(capsys, str(tmp_path / "tok"))
    assert out["title"].endswith("token directory (format vqgan-lc-tokens, version 1)")
    assert (out["rows"], out["shards"], out["grid"], out["codebook size"], out["dtype"]) == ("6", "2", "8 x 8", "512", "uint32")

    save_codebook(tmp_path / "cb.safetensors", torch.randn(100, 12), {"extractor": "pixels", "mode": "global"})
    out = info(capsys, str(tmp_path / "cb.safetensors"))
    assert out["title"].endswith("codebook file (format vqgan-lc-codebook, version 1)")
    assert (out["codebook size"], out["dim"], out["extractor"], out["mode"]) == ("100", "12", "pixels", "global")
    torch.save(torch.randn(50, 6), tmp_path / "codebook-official.pth")
    out = info(capsys, str(tmp_path / "codebook-official.pth"))
    assert out["title"].endswith("official codebook file (official release file)")
    assert (out["codebook size"], out["dim"]) == ("50", "6")

    bump_version(tmp_path / "tok" / "manifest.json")
    assert "is a token directory of format version 99" in refused(capsys, str(tmp_path / "tok"))
    bump_version(tmp_path / "model" / "config.json")
    assert "is a model directory of format version 99" in refused(capsys, str(tmp_path / "model"))


# ----------------------------------------------------------------------------------------- unknown paths
def test_unknown_paths_get_one_sentence(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert refused(capsys, str(tmp_path / "nowhere")).endswith("nowhere does not exist.")
    (tmp_path / "empty").mkdir()
    assert "has neither a config.json nor a manifest.json" in refused(capsys, str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"format": "something-else", "format_version": 1}))
    err = refused(capsys, str(tmp_path / "other"))
    assert "config.json records format 'something-else'" in err and "vqgan-lc-gpt" in err
    (tmp_path / "notes.txt").write_text("hello")
    assert "is none of a model, MAGE VQGAN, GPT or DiGIT tokenizer directory" in refused(capsys, str(tmp_path / "notes.txt"))
    torch.save({"model": {}, "epoch": 3}, tmp_path / "checkpoint.pth")
    assert "vqgan-lc convert" in refused(capsys, str(tmp_path / "checkpoint.pth"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "encode.json").write_text("{}")
    assert "unfinished token directory" in refused(capsys, str(tmp_path / "half"))
    g = GPT(GPTConfig(n_codes=8, grid=(2, 2), n_layer=1, n_head=1, n_embd=8))
    g.save_pretrained(tmp_path / "g")
    assert "weights file of a GPT directory: pass the directory" in refused(capsys, str(tmp_path / "g" / "model.safetensors"))
