"""Token directories: round trips, crash safety, bad images, multi-process, decode, mismatches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc import VQGANLC, FormatVersionError, create_model
from vqgan_lc.cli.main import main
from vqgan_lc.data import Preprocessing, list_images, load_rgb
from vqgan_lc.tokens import (
    EncodeError,
    EncodeOptions,
    TokenDataset,
    TokenFormatError,
    encode_dataset,
    open_tokens,
)

OPTS = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4)


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_round_trip_ids_labels_and_paths(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    manifest = encode_dataset(model_dir, photos, tmp_path / "tok", options=OPTS, progress=False)
    assert manifest["num_rows"] == 9 and manifest["grid"] == [8, 8] and len(manifest["shards"]) == 3
    tok = open_tokens(tmp_path / "tok")
    images = list_images(photos)
    assert tok.paths == list(images.paths) and tok.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    model = VQGANLC.from_pretrained(model_dir)
    pre = Preprocessing(64)
    x = torch.stack([pre(load_rgb(photos / p)) for p in images.paths])
    expected = model.encode(x).numpy()
    assert tok[:].dtype == np.uint32 and np.array_equal(tok[:].astype(np.int64), expected)
    assert np.array_equal(tok[5], expected[5]) and np.array_equal(tok[-1], expected[-1])
    ds = TokenDataset(tmp_path / "tok")
    ids, label = ds[4]
    assert ids.dtype == torch.int64 and ids.shape == (8, 8) and label == 1
    assert torch.equal(ids, torch.from_numpy(expected[4]))
    assert len(np.unique(expected)) > 5  # the check is not trivially one repeated id


def test_large_ids_survive_as_uint32(photos: Path, tmp_path: Path) -> None:
    # A 100,000-code model whose only near code is the last one: every token must read back as 99,999.
    torch.manual_seed(0)
    m = create_model("tiny", quantizer={"codebook_size": 100_000, "codebook_dim": 8}).eval()
    with torch.no_grad():
        m.quantize.projection.weight.copy_(torch.eye(8))
        m.quantize.projection.bias.zero_()
        m.quantize.codebook.fill_(1e4)
        m.quantize.codebook[99_999].zero_()
    encode_dataset(m, photos, tmp_path / "tok", options=OPTS, progress=False)
    tok = open_tokens(tmp_path / "tok")
    assert tok[:].dtype == np.uint32 and np.all(tok[:] == 99_999)
    assert int(TokenDataset(tmp_path / "tok")[0][0].max()) == 99_999


def test_killed_run_resumes_byte_identical(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    encode_dataset(model_dir, photos, clean, options=OPTS, progress=False)
    # A real SIGKILL in the middle: a child encodes one image per shard and is killed after the first shard.
    broken = tmp_path / "broken"
    code = (
        "import sys; from vqgan_lc.tokens import encode_dataset, EncodeOptions\n"
        "import vqgan_lc.tokens.encode as e, time\n"
        "w = e.write_shard\n"
        "def slow(*a, **k):\n"
        "    w(*a, **k); time.sleep(30)\n"
        "e.write_shard = slow\n"
        f"encode_dataset({str(model_dir)!r}, {str(photos)!r}, {str(broken)!r}, "
        "options=EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4), progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not (broken / "shard-00000.json").exists():
        assert proc.poll() is None and time.time() < deadline, "child died before its first shard"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "manifest.json").exists() and not (broken / "shard-00001.npy").exists()
    # Other crash states: an orphan temporary file and a shard whose record was never written.
    (broken / ".shard-00001.npy.tmp-999").write_bytes(b"partial")
    (broken / "shard-00002.npy").write_bytes(b"half a shard")
    encode_dataset(model_dir, photos, broken, options=OPTS, progress=False)
    assert tree_bytes(broken) == tree_bytes(clean)


def test_corrupt_shard_is_redone_on_rerun_and_refused_on_read(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    good = tree_bytes(out)
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(TokenFormatError, match="shard-00001.npy is corrupt"):
        open_tokens(out)
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    assert tree_bytes(out) == good
    (out / "shard-00002.npy").unlink()
    with pytest.raises(TokenFormatError, match="shard-00002.npy is missing"):
        open_tokens(out)


def test_corrupt_jpeg_is_skipped_and_recorded(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    bad = photos / "class_1_coffee" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated download
    m = encode_dataset(model_dir, photos, tmp_path / "tok", options=OPTS, progress=False)
    assert m["num_rows"] == 8 and m["num_skipped"] == 1
    assert m["skipped"][0]["path"] == "class_1_coffee/img_001.jpg" and m["skipped"][0]["reason"]
    tok = open_tokens(tmp_path / "tok")
    assert "class_1_coffee/img_001.jpg" not in tok.paths and len(tok.paths) == 8
    # Every other image is encoded exactly as without the bad file.
    model = VQGANLC.from_pretrained(model_dir)
    pre = Preprocessing(64)
    x = torch.stack([pre(load_rgb(photos / p)) for p in tok.paths])
    assert np.array_equal(tok[:].astype(np.int64), model.encode(x).numpy())


def test_corrupt_jpeg_under_fail_stops_naming_the_file_and_keeps_finished_shards(
    photos: Path, model_dir: Path, tmp_path: Path
) -> None:
    bad = photos / "class_2_chelsea" / "img_000.jpg"  # source index 6: shard 1 (4..8)
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    opts = EncodeOptions(image_size=64, batch_size=2, num_workers=0, shard_size=4, on_error="fail")
    with pytest.raises(EncodeError, match="class_2_chelsea/img_000.jpg"):
        encode_dataset(model_dir, photos, tmp_path / "tok", options=opts, progress=False)
    assert (tmp_path / "tok" / "shard-00000.json").exists()
    assert not (tmp_path / "tok" / "shard-00001.npy").exists() and not (tmp_path / "tok" / "manifest.json").exists()


@pytest.mark.slow
def test_two_processes_equal_one(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    encode_dataset(model_dir, photos, tmp_path / "one", options=OPTS, progress=False)
    two = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, devices=2)
    encode_dataset(model_dir, photos, tmp_path / "two", options=two, progress=False)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_decode_cli_equals_model_decode(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    encode_dataset(model_dir, photos, tmp_path / "tok", options=OPTS, progress=False)
    assert main(["decode", "--model", str(model_dir), "--tokens", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "png"), "--indices", "2:5"]) == 0
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == ["00000002.png", "00000003.png", "00000004.png"]
    model = VQGANLC.from_pretrained(model_dir)
    ids = torch.from_numpy(open_tokens(tmp_path / "tok")[2:5].astype(np.int64))
    expected = model.decode(ids).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name, exp in zip(files, expected):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / name)), exp)


def test_mismatches_refuse(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    other = create_model("tiny", quantizer={"codebook_size": 256}).save_pretrained(tmp_path / "other")
    with pytest.raises(TokenFormatError, match="another model, source list or options"):
        encode_dataset(other, photos, out, options=OPTS, progress=False)
    with pytest.raises(TokenFormatError, match="another model"):
        encode_dataset(model_dir, photos, out, options=EncodeOptions(image_size=128, num_workers=0, shard_size=4),
                       progress=False)
    # --overwrite replaces the old run
    m = encode_dataset(other, photos, out, options=OPTS, overwrite=True, progress=False)
    assert m["tokenizer"]["codebook_size"] == 256
    # decoding with a model that did not make them refuses unless forced
    rc = main(["decode", "--model", str(model_dir), "--tokens", str(out), "--out", str(tmp_path / "png")])
    assert rc == 1 and not (tmp_path / "png").exists()
    assert main(["decode", "--model", str(model_dir), "--tokens", str(out), "--out", str(tmp_path / "png"),
                 "--indices", "0", "--force"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="format_version 7"):
        open_tokens(out)


def test_cli_encode_then_info(photos: Path, model_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rc = main(["encode", "--model", str(model_dir), "--data", str(photos), "--out", str(tmp_path / "tok"),
               "--batch-size", "4", "--num-workers", "1", "--shard-size", "5"])
    assert rc == 0
    assert "9 images as 8x8 tokens, 0 skipped" in capsys.readouterr().out
    assert len(open_tokens(tmp_path / "tok")) == 9
