"""Codebook building end to end: metadata, per-class order, CLI stages, official files, one training step."""

from __future__ import annotations

import importlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, photo_crops
from PIL import Image

pytest.importorskip("faiss")

from vqgan_lc import create_model
from vqgan_lc._io import sha256_file
from vqgan_lc.cli.main import main
from vqgan_lc.codebook import (
    InsufficientMemoryError,
    build_codebook,
    codebook_from_features,
    extract_features,
    kmeans_per_class,
    load_codebook,
)
from vqgan_lc.data import list_images
from vqgan_lc.errors import CodebookError
from vqgan_lc.extractors import PixelExtractor

CLASSES = {
    "cats": ("chelsea", "coffee"),
    "space": ("rocket", "hubble_deep_field"),
    "people": ("astronaut", "immunohistochemistry"),
}


def write_classes(root: Path, order: list[str] | None = None, size: int = 128) -> Path:
    """One sub-folder per class with real photographs, created in ``order`` (the listing order on disk)."""
    for cls in order or list(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in CLASSES[cls]:
            img = Image.fromarray(photo(name))
            img.thumbnail((size, size))
            img.save(root / cls / f"{name}.png")
    return root


PROVENANCE_KEYS = {"extractor", "weights_sha256", "layer", "pooling", "image_size", "k", "per_class_k", "seed",
                   "class_order", "source_hash", "mode", "grid", "dim", "n_points", "num_images"}


def test_global_codebook_metadata_round_trip(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "data")
    out = tmp_path / "codebook.safetensors"
    cb = build_codebook(root, PixelExtractor(image_size=64), out, k=8, pool=2, seed=3, progress=False)
    assert out.is_file() and (tmp_path / "codebook.features" / "manifest.json").is_file()
    back = load_codebook(out)
    assert torch.equal(back.vectors, cb.vectors) and back.vectors.shape == (8, 768)
    assert back.provenance == json.loads(json.dumps(cb.provenance))
    p = back.provenance
    assert PROVENANCE_KEYS <= set(p)
    assert p["extractor"] == "pixels" and p["pooling"] == 2 and p["grid"] == [2, 2] and p["image_size"] == [64, 64]
    assert p["k"] == 8 and p["per_class_k"] is None and p["seed"] == 3 and p["mode"] == "global"
    assert p["source_hash"] == list_images(root).source_hash()
    assert p["n_points"] == 6 * 4 and p["num_images"] == 6
    # the centres are pooled pixel patches in [-1, 1]
    assert back.vectors.min() >= -1 and back.vectors.max() <= 1


def test_per_class_rows_do_not_depend_on_the_listing_order(tmp_path: Path) -> None:
    a = write_classes(tmp_path / "a", order=["cats", "space", "people"])
    b = write_classes(tmp_path / "b", order=["people", "space", "cats"])
    ext = PixelExtractor(image_size=64)
    ca = build_codebook(a, ext, tmp_path / "a.safetensors", per_class=3, k=9, seed=1, progress=False)
    cb = build_codebook(b, ext, tmp_path / "b.safetensors", per_class=3, seed=1, progress=False)
    assert torch.equal(ca.vectors, cb.vectors) and ca.vectors.shape == (9, 768)
    assert ca.provenance["class_order"] == ["cats", "people", "space"] == cb.provenance["class_order"]
    assert ca.provenance["per_class_k"] == 3 and ca.provenance["class_counts"] == [3, 3, 3]
    # rows [3i, 3i + 3) are the centres of the i-th class in sorted order: k-means of that class alone
    store = extract_features(a, ext, tmp_path / "a.features", progress=False)
    for i, cls in enumerate(ca.provenance["class_order"]):
        alone = kmeans_per_class({cls: store.class_vectors(store.classes.index(cls))}, 3, seed=1)
        assert np.array_equal(alone.centroids, ca.vectors[3 * i : 3 * i + 3].numpy())
    # a file list in another order gives the same codebook
    fl = tmp_path / "list.txt"
    fl.write_text("\n".join(sorted((f"{c}/{n}.png,{c}" for c in CLASSES for n in CLASSES[c]), reverse=True)))
    cc = build_codebook(a, ext, tmp_path / "c.safetensors", file_list=fl, per_class=3, seed=1, progress=False,
                        features_dir=tmp_path / "c.features")
    assert torch.equal(cc.vectors, ca.vectors)


def test_clustering_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_classes(tmp_path / "data")
    store = extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", progress=False)
    with pytest.raises(CodebookError, match=r"--k 10 does not equal --per-class 3 x 3 classes = 9"):
        codebook_from_features(store, k=10, per_class=3)
    with pytest.raises(CodebookError, match="cannot make 100 centres from 24"):
        codebook_from_features(store, k=100)
    with pytest.raises(CodebookError, match="--per-class 9"):
        codebook_from_features(store, per_class=9)  # 2 images x 4 vectors per class
    kmod = importlib.import_module("vqgan_lc.codebook.kmeans")
    monkeypatch.setattr(kmod, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(InsufficientMemoryError, match="GiB"):
        codebook_from_features(store, k=4)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(root / "cats" / "chelsea.png", flat / "a.png")
    shutil.copy(root / "cats" / "coffee.png", flat / "b.png")
    monkeypatch.undo()
    fs = extract_features(flat, PixelExtractor(image_size=32), tmp_path / "flat.f", progress=False)
    with pytest.raises(CodebookError, match="class labels"):
        codebook_from_features(fs, per_class=2)


def test_cli_split_stages_equal_the_combined_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_classes(tmp_path / "data")
    common = ["--extractor", "pixels", "--image-size", "64", "--pool", "2", "--workers", "0", "--no-progress"]
    assert main(["build-codebook", "--data", str(root), *common, "--features-only", str(tmp_path / "feat")]) == 0
    assert "6 images x 2x2 x 768" in capsys.readouterr().out
    assert main(["build-codebook", "--from-features", str(tmp_path / "feat"), "--per-class", "2",
                 "--out", str(tmp_path / "split.safetensors"), "--no-progress"]) == 0
    assert main(["build-codebook", "--data", str(root), *common, "--per-class", "2", "--k", "6",
                 "--out", str(tmp_path / "both.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "6 x 768 codebook (2 per class x 3 classes" in out
    a, b = load_codebook(tmp_path / "split.safetensors"), load_codebook(tmp_path / "both.safetensors")
    assert torch.equal(a.vectors, b.vectors) and a.provenance == b.provenance
    assert (tmp_path / "both.features" / "manifest.json").is_file()
    # --pool cannot change after extraction
    assert main(["build-codebook", "--from-features", str(tmp_path / "feat"), "--k", "4", "--pool", "4",
                 "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "extract again" in capsys.readouterr().err


def test_cli_clip_with_a_local_checkpoint(tmp_path: Path) -> None:
    from open_clip.model import CLIP

    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    model = CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text)
    cfg, weights = tmp_path / "tiny-clip.json", tmp_path / "tiny-clip.pt"
    cfg.write_text(json.dumps({"embed_dim": 24, "vision_cfg": vision, "text_cfg": text}))
    torch.save(model.state_dict(), weights)
    root = write_classes(tmp_path / "data")
    out = tmp_path / "clip.safetensors"
    assert main(["build-codebook", "--data", str(root), "--extractor", "clip", "--model", str(cfg),
                 "--weights", str(weights), "--pool", "2", "--k", "5", "--out", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    cb = load_codebook(out)
    p = cb.provenance
    assert cb.vectors.shape == (5, 24)
    assert p["extractor"] == "clip" and p["model"] == "tiny-clip" and p["weights"] == "tiny-clip.pt"
    assert p["weights_sha256"] == sha256_file(weights)
    assert p["layer"].startswith("final") and p["grid"] == [2, 2] and p["image_size"] == [32, 32]


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_cli_without_weights_stops_with_one_sentence_naming_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    root = write_classes(tmp_path / "data", order=["cats"])
    rc = main(["build-codebook", "--data", str(root), "--extractor", kind, "--k", "4",
               "--out", str(tmp_path / "c.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.count(". ") == 0 and "--weights" in err
    assert not (tmp_path / "c.features").exists()


def test_official_pth_codebook_is_read_safely(tmp_path: Path) -> None:
    vectors = torch.randn(16, 768)
    path = tmp_path / "codebook-100K.pth"
    torch.save(vectors, path)  # the official release: one pickled float32 tensor
    cb = load_codebook(path)
    assert torch.equal(cb.vectors, vectors) and cb.provenance["source"] == "official-pth"
    model = create_model("tiny", codebook=path)
    assert torch.equal(model.quantize.codebook, vectors)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("this must never run",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(CodebookError, match="not a readable codebook"):
        load_codebook(bad)


def test_a_model_built_with_the_codebook_trains_a_step(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "data")
    path = tmp_path / "codebook.safetensors"
    build_codebook(root, PixelExtractor(image_size=64), path, k=16, seed=0, progress=False)
    built = load_codebook(path).vectors
    torch.manual_seed(0)
    model = create_model("tiny", codebook=path).train()
    assert model.codebook_size == 16 and torch.equal(model.quantize.codebook, built)
    x = photo_crops(64, 2)
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.quantizer.ids.shape == (2, 8, 8)
    loss = (out.reconstruction - x).abs().mean() + out.quantizer.loss
    loss.backward()
    grad = model.quantize.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert not model.quantize.codebook.requires_grad
    before = model.quantize.projection.weight.detach().clone()
    torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    assert not torch.equal(model.quantize.projection.weight, before)
    assert torch.equal(model.quantize.codebook, built)  # the frozen buffer is unchanged
    assert torch.isfinite(loss)
