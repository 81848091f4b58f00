"""Image listing and the feature store: order, unreadable files, atomic shards, resume, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image
from torch import nn

from vqgan_lc.codebook import FeatureStore, FeatureStoreError, extract_features
from vqgan_lc.data import ImageSourceError, list_images
from vqgan_lc.errors import FormatVersionError
from vqgan_lc.extractors import ModuleExtractor, PixelExtractor

LAYOUT = {
    "space/rocket.jpg": "rocket",
    "space/deep/hubble.png": "hubble_deep_field",
    "cats/chelsea.jpg": "chelsea",
    "cats/coffee.PNG": "coffee",
    "people/astronaut.jpg": "astronaut",
    "people/retina.bmp": "retina",
    "loose.jpg": "immunohistochemistry",
}


def write_photos(root: Path, layout: dict[str, str] = LAYOUT, broken: tuple[str, ...] = ("cats/broken.jpg",),
                 size: int = 96) -> Path:
    """Real photographs from scikit-image (downscaled for speed) plus unreadable files."""
    for rel, name in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(photo(name))
        img.thumbnail((size * 2, size * 2))
        img.save(p)
    for rel in broken:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------------------- listing
def test_folder_listing_is_sorted_with_classes_from_first_level_folders(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    images = list_images(root)
    assert images.paths == (
        "cats/broken.jpg", "cats/chelsea.jpg", "cats/coffee.PNG", "loose.jpg", "people/astronaut.jpg",
        "people/retina.bmp", "space/deep/hubble.png", "space/rocket.jpg",
    )
    assert images.classes == ("cats", "people", "space")
    assert images.labels == (0, 0, 0, -1, 1, 1, 2, 2)
    assert len(images.source_hash()) == 64


def test_file_list_is_sorted_and_labels_sort_numerically(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    lines = ["space/rocket.jpg,10", "# comment", "", "cats/chelsea.jpg,2", "people/astronaut.jpg", "loose.jpg,2"]
    fl = tmp_path / "list.txt"
    fl.write_text("\n".join(lines))
    images = list_images(root, fl)
    assert images.paths == ("cats/chelsea.jpg", "loose.jpg", "people/astronaut.jpg", "space/rocket.jpg")
    assert images.classes == ("2", "10")
    assert images.labels == (0, 0, -1, 1)
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(reversed(lines)))
    assert list_images(root, shuffled) == images
    fl.write_text("cats/chelsea.jpg\ncats/chelsea.jpg\n")
    with pytest.raises(ImageSourceError, match="listed twice"):
        list_images(root, fl)


def test_listing_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceError, match="--data"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="no images"):
        list_images(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- store
def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_store_layout_unreadable_images_and_contents(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    ext = PixelExtractor(patch_size=16, image_size=64)
    store = extract_features(root, ext, tmp_path / "feat", pool=2, shard_size=3, batch_size=2, progress=False)
    assert store.num_sources == 8 and store.num_shards == 3
    assert store.num_images == 7 and store.grid == (2, 2) and store.dim == 768
    assert [s["path"] for s in store.skipped] == ["cats/broken.jpg"]
    assert "UnidentifiedImageError" in store.skipped[0]["reason"] or "OSError" in store.skipped[0]["reason"]
    m = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    assert m["format"] == "vqgan-lc-features" and m["format_version"] == 1 and m["complete"]
    assert m["shards"]["0"]["rows"] == 2 and m["shards"]["0"]["skipped"][0]["index"] == 0
    assert m["shards"]["0"]["labels"] == [0]
    shard0 = store.load_shard(0)
    assert shard0.dtype == np.float16 and shard0.shape == (2, 2, 2, 768)
    # row 0 of shard 0 is cats/chelsea.jpg: its pooled pixel patches
    from vqgan_lc.data import load_rgb
    from vqgan_lc.extractors import pool_features

    x = ext.preprocess(load_rgb(root / "cats/chelsea.jpg"))[None]
    want = pool_features(ext(x), 2)[0].numpy()
    assert np.allclose(shard0[0].astype(np.float32), want, atol=2e-3)
    assert store.row_labels().tolist() == [0, 0, -1, 1, 1, 2, 2]
    assert store.class_counts().tolist() == [2, 2, 2]
    assert store.class_vectors(1).shape == (2 * 4, 768)
    ids = np.array([0, 5, 27])
    g = store.gather_vectors(ids)
    flat = np.concatenate([store.load_shard(i).reshape(-1, 768) for i in range(3)]).astype(np.float32)
    assert np.array_equal(g, flat[ids])
    assert not list((tmp_path / "feat").glob("*.tmp"))


class Crash(RuntimeError):
    pass


def test_resume_after_an_interrupted_extraction_gives_the_same_store(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 8, stride=8))

    def make() -> ModuleExtractor:
        class Grid(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x).permute(0, 2, 3, 1)

        return ModuleExtractor(Grid(), image_size=32, name="grid")

    clean = extract_features(root, make(), tmp_path / "clean", shard_size=2, batch_size=1, progress=False,
                             dtype="float32")

    ext = make()
    calls = {"n": 0}
    forward = ext.forward

    def crashing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:  # the probe, then a crash in the middle of the third shard
            raise Crash("power cut")
        return forward(x)

    ext.forward = crashing  # type: ignore[method-assign]
    with pytest.raises(Crash):
        extract_features(root, ext, tmp_path / "resumed", shard_size=2, batch_size=1, progress=False, dtype="float32")
    partial = FeatureStore.open(tmp_path / "resumed", require_complete=False)
    assert sorted(partial.manifest["shards"]) == ["0", "1"]
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(tmp_path / "resumed")
    (tmp_path / "resumed" / "features-00002.npy.tmp").write_bytes(b"half a shard")  # a torn write
    before = (tmp_path / "resumed" / "features-00000.npy").stat().st_mtime_ns

    resumed = extract_features(root, make(), tmp_path / "resumed", shard_size=2, batch_size=1, progress=False,
                               dtype="float32")
    assert (tmp_path / "resumed" / "features-00000.npy").stat().st_mtime_ns == before  # not redone
    assert files(tmp_path / "resumed") == files(tmp_path / "clean")  # byte-identical, manifest included
    assert resumed.num_images == clean.num_images == 7


def test_a_damaged_shard_is_extracted_again(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data", broken=())
    ext = PixelExtractor(image_size=32)
    extract_features(root, ext, tmp_path / "f", shard_size=4, progress=False)
    good = files(tmp_path / "f")
    np.save(tmp_path / "f" / "features-00001.npy", np.zeros((1, 2, 2, 768), np.float16))  # wrong shape
    extract_features(root, ext, tmp_path / "f", shard_size=4, progress=False)
    assert files(tmp_path / "f") == good


def test_workers_give_the_same_store(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    ext = PixelExtractor(image_size=32)
    extract_features(root, ext, tmp_path / "w0", shard_size=3, batch_size=2, num_workers=0, progress=False)
    extract_features(root, ext, tmp_path / "w2", shard_size=3, batch_size=2, num_workers=2, progress=False)
    assert files(tmp_path / "w0") == files(tmp_path / "w2")


def test_other_options_are_refused_unless_overwrite(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data")
    extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", pool=1, progress=False)
    with pytest.raises(FeatureStoreError, match=r"pool: 1 vs 2.*--overwrite"):
        extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", pool=2, progress=False)
    with pytest.raises(FeatureStoreError, match="extractor: image_size"):
        extract_features(root, PixelExtractor(image_size=64), tmp_path / "f", progress=False)
    (root / "cats" / "extra.jpg").write_bytes((root / "cats" / "chelsea.jpg").read_bytes())
    with pytest.raises(FeatureStoreError, match="image list differs"):
        extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", progress=False)
    store = extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", pool=2, overwrite=True,
                             progress=False)
    assert store.pool == 2 and store.grid == (1, 1) and store.num_sources == 9


def test_unknown_format_version_is_rejected(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data", broken=())
    extract_features(root, PixelExtractor(image_size=32), tmp_path / "f", progress=False)
    mpath = tmp_path / "f" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = 99
    mpath.write_text(json.dumps(m))
    with pytest.raises(FormatVersionError, match="format_version 99"):
        FeatureStore.open(tmp_path / "f")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore.open(tmp_path)


def test_float16_overflow_is_a_clear_error(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "data", broken=())

    class Huge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1, 1, 2), 1e6)

    with pytest.raises(FeatureStoreError, match="float32"):
        extract_features(root, ModuleExtractor(Huge(), image_size=32), tmp_path / "f", progress=False)
