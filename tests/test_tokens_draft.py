"""Reduced-scale JPEG decoding (``EncodeOptions(jpeg_draft=True)`` / ``vqgan-lc encode --jpeg-draft``)
and the decode path it shares with the default: opt-in, recorded, close to a full decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_photo_folder
from PIL import Image

from vqgan_lc import VQGANLC
from vqgan_lc.cli.main import main
from vqgan_lc.data import Preprocessing, draft_size, list_images, load_rgb
from vqgan_lc.tokens import EncodeOptions, TokenFormatError, encode_dataset, open_tokens

SIZE = 32  # draft request 64 px; the 400 x 300+ px files below decode at 1/4 scale


@pytest.fixture
def big_photos(tmp_path: Path) -> Path:
    write_photo_folder(tmp_path / "big", per_class=2, size=300)  # (300 + 8j) x 300 px JPEGs
    return tmp_path / "big"


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_load_rgb_full_decode_is_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    for name in ("a.jpg", "gray.png"):
        with Image.open(tmp_path / name) as im:
            expected = np.asarray(im.convert("RGB"))
        got = load_rgb(tmp_path / name)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), expected), name
    # alpha is composited on white now (audit O6), no longer dropped
    a = rgb[..., :1].astype(np.float64) / 255
    expected = np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), expected)


def test_draft_decode_is_close_to_the_full_decode(big_photos: Path) -> None:
    pre = Preprocessing(SIZE)
    paths = [big_photos / p for p in list_images(big_photos).paths]
    full = torch.stack([pre(load_rgb(p)) for p in paths])
    drafted = [load_rgb(p, draft_size(SIZE)) for p in paths]
    assert all(min(im.size) >= 2 * SIZE and max(im.size) < 200 for im in drafted)  # really reduced, not below 2x
    diff = (torch.stack([pre(im) for im in drafted]) - full).abs()
    assert 0 < diff.mean() < 0.02  # [-1, 1] scale: under 2.6 / 255 on average, but not identical
    # Formats without reduced-scale decoding ignore the request.
    png = big_photos.parent / "a.png"
    Image.open(paths[0]).save(png)
    assert np.array_equal(np.asarray(load_rgb(png, draft_size(SIZE))), np.asarray(load_rgb(png)))


def test_jpeg_draft_is_recorded_and_refused_on_a_rerun_without_it(
    big_photos: Path, model_dir: Path, tmp_path: Path
) -> None:
    exact = EncodeOptions(image_size=SIZE, batch_size=2, num_workers=0, shard_size=4)
    draft = EncodeOptions(image_size=SIZE, batch_size=2, num_workers=0, shard_size=4, jpeg_draft=True)
    m_exact = encode_dataset(model_dir, big_photos, tmp_path / "exact", options=exact, progress=False)
    m_draft = encode_dataset(model_dir, big_photos, tmp_path / "draft", options=draft, progress=False)
    # Off: the preprocessing record is exactly what it was before the option existed.
    assert m_exact["preprocessing"] == {"image_size": SIZE, "resize": "short-side-bicubic", "crop": "center",
                                        "range": "[-1, 1]", "orientation": "exif", "alpha": "white"}
    assert m_draft["preprocessing"] == {**m_exact["preprocessing"], "jpeg_draft": {"min_short_side": 2 * SIZE}}
    assert json.loads((tmp_path / "draft" / "encode.json").read_text())["preprocessing"]["jpeg_draft"]
    # The ids are the model's ids of the draft-decoded images.
    model = VQGANLC.from_pretrained(model_dir)
    pre = Preprocessing(SIZE)
    paths = list_images(big_photos).paths
    x = torch.stack([pre(load_rgb(big_photos / p, draft_size(SIZE))) for p in paths])
    tok = open_tokens(tmp_path / "draft")
    assert len(tok) == len(paths) == m_draft["num_rows"]
    assert np.array_equal(tok[:].astype(np.int64), model.encode(x).numpy())
    # Switching the option on an existing directory refuses, in both directions.
    with pytest.raises(TokenFormatError, match="preprocessing"):
        encode_dataset(model_dir, big_photos, tmp_path / "exact", options=draft, progress=False)
    with pytest.raises(TokenFormatError, match="preprocessing"):
        encode_dataset(model_dir, big_photos, tmp_path / "draft", options=exact, progress=False)
    # The CLI flag gives the same directory.
    assert main(["encode", "--model", str(model_dir), "--data", str(big_photos), "--out", str(tmp_path / "cli"),
                 "--image-size", str(SIZE), "--batch-size", "2", "--num-workers", "0", "--shard-size", "4",
                 "--jpeg-draft"]) == 0
    assert tree_bytes(tmp_path / "cli") == tree_bytes(tmp_path / "draft")


def test_worker_processes_give_the_same_directory(big_photos: Path, model_dir: Path, tmp_path: Path) -> None:
    # Batches collated in a DataLoader worker (into shared memory) equal batches made in this process.
    for workers in (0, 1):
        opts = EncodeOptions(image_size=SIZE, batch_size=4, num_workers=workers, shard_size=4)
        encode_dataset(model_dir, big_photos, tmp_path / f"w{workers}", options=opts, progress=False)
    assert tree_bytes(tmp_path / "w0") == tree_bytes(tmp_path / "w1")
