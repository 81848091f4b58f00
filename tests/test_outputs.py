"""Outputs and identity (issue 14): guarded output folders, the advisory lock, a tokenizer identity that covers
the weights, checksummed weights and feature shards, changed sources redone, stable and group-readable files,
a clear device error."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image

from vqgan_lc import VQGANLC
from vqgan_lc._io import LOCK_NAME, OutputLock, atomic_save_safetensors, prepare_output_dir
from vqgan_lc.cli.main import main
from vqgan_lc.cli.train import check_fresh_root
from vqgan_lc.codebook import FeatureStore, save_codebook
from vqgan_lc.codebook.build import extract_features
from vqgan_lc.errors import CheckpointError, DeviceError, OutputExistsError, OutputLockedError
from vqgan_lc.extractors import PixelExtractor
from vqgan_lc.tokens import EncodeOptions, TokenFormatError, encode_dataset, open_tokens
from vqgan_lc.tokens.export import export_tokens

OPTS = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4)


def tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (hidden ones included) -> its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    """Exit status and stderr of ``vqgan-lc ARGV`` run in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"vqgan-lc {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def token_dir(photos: Path, model_dir: Path, tmp_path: Path) -> Path:
    encode_dataset(model_dir, photos, tmp_path / "tok", options=OPTS, progress=False)
    return tmp_path / "tok"


def user_folder(d: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return tree(d)


# ----------------------------------------------------------------------------------------- the shared guard
def test_prepare_output_dir_rules(tmp_path: Path) -> None:
    own = (r"out-\d+\.bin",)
    fresh = tmp_path / "fresh" / "deeper"
    prepare_output_dir(fresh, "test output", overwrite=False, own_names=own)
    assert fresh.is_dir() and list(fresh.iterdir()) == []

    d = tmp_path / "d"
    before = user_folder(d, {"notes.txt": b"mine", ".x.tmp-1": b"also mine", "out-1.bin.tmp": b"not ours either"})
    with pytest.raises(OutputExistsError, match=r"is not empty and is not a test output \(it holds \.x\.tmp-1, "
                                                r"notes\.txt, out-1\.bin\.tmp\).*--overwrite"):
        prepare_output_dir(d, "test output", overwrite=False, own_names=own, lock=True)
    assert tree(d) == before  # nothing written, not even the lock file

    e = tmp_path / "e"
    user_folder(e, {"out-1.bin": b"earlier", ".out-2.bin.tmp-999999999": b"a dead run's temporary"})
    with pytest.raises(OutputExistsError, match=r"already holds a test output from an earlier run \(out-1\.bin\)"):
        prepare_output_dir(e, "test output", overwrite=False, own_names=own)
    prepare_output_dir(e, "test output", overwrite=False, own_names=own, resumable=True)
    assert sorted(tree(e)) == ["out-1.bin"]  # the dead run's temporary is swept, the output kept

    f = tmp_path / "f"
    user_folder(f, {"out-1.bin": b"earlier", "keep.txt": b"user"})
    prepare_output_dir(f, "test output", overwrite=True, own_names=own)
    assert tree(f) == {"keep.txt": b"user"}  # the earlier output removed, the user's file kept

    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        prepare_output_dir(f / "keep.txt", "test output", overwrite=True, own_names=own)


def test_lock_stops_a_second_run_at_once(tmp_path: Path, photos: Path, model_dir: Path) -> None:
    out = tmp_path / "tok"
    with OutputLock(out):  # another run holding the folder (a second open file description: flock conflicts)
        (out / LOCK_NAME).write_text("4242\n")
        with pytest.raises(OutputLockedError, match=rf"another vqgan-lc run \(pid 4242\) is writing to {out}; wait"):
            encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the second run
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)  # released: a run goes through
    assert open_tokens(out).manifest["num_rows"] == 9 and not (out / LOCK_NAME).exists()  # removed at the end

    store = tmp_path / "feat"
    with OutputLock(store, option="--features-dir"), pytest.raises(OutputLockedError, match="--features-dir"):
        extract_features(photos, PixelExtractor(image_size=32), store, progress=False)


def test_a_second_process_on_one_output_stops_with_a_sentence(
        tmp_path: Path, photos: Path, model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tok"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vqgan_lc._io import OutputLock; "
         f"lock = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        rc, err = run_cli(capsys, "encode", "--model", model_dir, "--data", photos, "--out", out, "--image-size", "64",
                          "--num-workers", "0")
        line = one_error_line(err, "encode")
        assert rc == 1 and f"another vqgan-lc run (pid {holder.pid}) is writing to {out}" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock died with it: the next run takes the folder over and removes the file
    assert run_cli(capsys, "encode", "--model", model_dir, "--data", photos, "--out", out, "--image-size", "64",
                   "--num-workers", "0")[0] == 0
    assert not (out / LOCK_NAME).exists() and open_tokens(out).manifest["num_rows"] == 9


# ----------------------------------------------------------------------------------------- D2-D4 per command
def test_encode_refuses_a_users_folder_and_overwrite_keeps_other_names(
        photos: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    user = tmp_path / "userdir"
    before = user_folder(user, {"labels.npy": b"user labels", "paths.txt": b"user paths", ".notes.tmp-2023": b"n",
                                "keep.txt": b"k"})
    rc, err = run_cli(capsys, "encode", "--model", model_dir, "--data", photos, "--out", user, "--image-size", "64",
                      "--num-workers", "0")
    line = one_error_line(err, "encode")
    assert rc == 1 and str(user) in line and "is not a token directory" in line and "--overwrite" in line
    assert tree(user) == before

    only_format_names = tmp_path / "only_format_names"  # no foreign name, but no run of ours either
    before_names = user_folder(only_format_names, {"labels.npy": b"user labels", "paths.txt": b"user paths"})
    rc, err = run_cli(capsys, "encode", "--model", model_dir, "--data", photos, "--out", only_format_names,
                      "--image-size", "64", "--num-workers", "0")
    assert rc == 1 and "token files from an unknown run (labels.npy, paths.txt)" in one_error_line(err, "encode")
    assert tree(only_format_names) == before_names

    rc, err = run_cli(capsys, "encode", "--model", model_dir, "--data", photos, "--out", user, "--image-size", "64",
                      "--num-workers", "0", "--overwrite")
    assert rc == 0, err
    after = tree(user)
    assert after["keep.txt"] == b"k" and after[".notes.tmp-2023"] == b"n"  # other names untouched
    assert open_tokens(user).manifest["num_rows"] == 9


def test_feature_store_refuses_a_users_folder(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    feat = tmp_path / "u_feat"
    before = user_folder(feat, {"download.tmp": b"d", ".x.tmp-1": b"x", "sources.tsv": b"s"})
    rc, err = run_cli(capsys, "build-codebook", "--data", photos, "--extractor", "pixels", "--image-size", "32",
                      "--features-only", feat, "--workers", "0", "--no-progress")
    line = one_error_line(err, "build-codebook")
    assert rc == 1 and str(feat) in line and "not a feature store" in line and "--overwrite" in line
    assert tree(feat) == before
    only_sources = tmp_path / "only_sources"
    before = user_folder(only_sources, {"sources.tsv": b"mine"})
    rc, err = run_cli(capsys, "build-codebook", "--data", photos, "--extractor", "pixels", "--image-size", "32",
                      "--features-only", only_sources, "--workers", "0", "--no-progress")
    assert rc == 1 and "without a manifest (sources.tsv)" in one_error_line(err, "build-codebook")
    assert tree(only_sources) == before


def test_decode_refuses_an_earlier_decode_and_a_users_folder(
        token_dir: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "png"
    assert run_cli(capsys, "decode", "--model", model_dir, "--tokens", token_dir, "--out", out)[0] == 0
    assert len(list(out.glob("*.png"))) == 9
    earlier = tree(out)
    rc, err = run_cli(capsys, "decode", "--model", model_dir, "--tokens", token_dir, "--out", out,
                      "--indices", "0:2")
    line = one_error_line(err, "decode")
    assert rc == 1 and "already holds a folder of decoded images from an earlier run" in line and "--overwrite" in line
    assert tree(out) == earlier
    rc, err = run_cli(capsys, "decode", "--model", model_dir, "--tokens", token_dir, "--out", out,
                      "--indices", "0:2", "--overwrite")
    assert rc == 0, err
    assert sorted(tree(out)) == ["00000000.png", "00000001.png"]  # not a mix of two runs

    user = tmp_path / "holiday"
    before = user_folder(user, {"00000000.png": b"", "beach.jpg": b"b"})
    rc, err = run_cli(capsys, "decode", "--model", model_dir, "--tokens", token_dir, "--out", user)
    assert rc == 1 and "is not a folder of decoded images (it holds beach.jpg)" in one_error_line(err, "decode")
    assert tree(user) == before


def test_evaluate_refuses_an_earlier_report(token_dir: Path, model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    before = user_folder(out, {"report.md": b"my report", "per_image.csv": b"a,b\n"})
    rc, err = run_cli(capsys, "evaluate", "--model", model_dir, "--tokens", token_dir, "--out", out,
                      "--num-workers", "0")
    line = one_error_line(err, "evaluate")
    assert rc == 1 and "already holds an evaluation report from an earlier run" in line and "--overwrite" in line
    assert tree(out) == before


def test_convert_refuses_another_model(official_tiny: Path, model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    before = tree(model_dir)
    rc, err = run_cli(capsys, "convert", "--checkpoint", official_tiny / "vqgan_lc_official_format.pth",
                      "--codebook", official_tiny / "codebook.pth",
                      "--config", official_tiny / "vq_config.yaml", "--out", model_dir)
    line = one_error_line(err, "convert")
    assert rc == 1 and "already holds a model directory from an earlier run" in line and "--overwrite" in line
    assert tree(model_dir) == before


def test_export_tokens_says_what_the_folder_holds(token_dir: Path, tmp_path: Path) -> None:
    user = tmp_path / "mine"
    before = user_folder(user, {"a.txt": b"a"})
    with pytest.raises(Exception, match=r"is not empty and is not a token export \(it holds a\.txt\)"):
        export_tokens(token_dir, user, "memmap")
    assert tree(user) == before
    export_tokens(token_dir, tmp_path / "exp", "memmap")
    with pytest.raises(Exception, match="holds an earlier token export; pass --overwrite"):
        export_tokens(token_dir, tmp_path / "exp", "memmap")


def test_train_refuses_a_locked_root_and_an_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train_helpers import write_codebook
    from train_helpers import write_photos as write_train_photos

    photos = write_train_photos(tmp_path / "photos")[0].parent
    cb = write_codebook(tmp_path / "codebook.safetensors")
    root = tmp_path / "run"
    argv = ["train", "--config", "tiny_cpu", "--data.data", photos, "--codebook", cb, "--data.image_size", "32",
            "--data.batch_size", "2", "--data.num_workers", "0", "--model.optim.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", root]
    with OutputLock(root):
        rc, err = run_cli(capsys, *argv)
    line = one_error_line(err, "train")
    assert rc == 1 and f"is writing to {root}; wait for it to finish or choose another --trainer.default_root_dir" in line
    assert sorted(tree(root)) == []  # the holder's lock file went with it; nothing was trained
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    rc, err = run_cli(capsys, *argv)
    line = one_error_line(err, "train")
    assert rc == 1 and "already holds a training run (checkpoints/last.ckpt)" in line and "--overwrite" in line
    assert tree(root) == {"checkpoints/last.ckpt": b"an earlier run"}


def test_train_root_with_an_earlier_run(tmp_path: Path) -> None:
    root = tmp_path / "run"
    check_fresh_root(root, overwrite=False)  # nothing there yet
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"already holds a training run \(checkpoints/last\.ckpt, model\); "
                                                r"resume it with --ckpt-path last"):
        check_fresh_root(root, overwrite=False)
    check_fresh_root(root, overwrite=True)
    assert tree(root) == {"notes.txt": b"mine"}
    from vqgan_lc.cli.train import translate

    assert translate(["--overwrite", "--ckpt-path", "last"]) == ["--overwrite=true", "--ckpt_path", "last"]


# ----------------------------------------------------------------------------------------- S1 identity
def test_tokens_of_another_model_of_the_same_architecture_are_refused(
        photos: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tiny_model(seed=1).save_pretrained(tmp_path / "other")
    a, b = VQGANLC.from_pretrained(model_dir), VQGANLC.from_pretrained(other)
    assert a.config_hash() == b.config_hash() and a.weights_hash() != b.weights_hash()
    out = tmp_path / "tok"
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    (out / "shard-00001.npy").unlink()
    with pytest.raises(TokenFormatError, match=r"another model.*differs in: tokenizer"):
        encode_dataset(other, photos, out, options=OPTS, progress=False)
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    rc, err = run_cli(capsys, "decode", "--model", other, "--tokens", out, "--out", tmp_path / "png")
    line = one_error_line(err, "decode")
    assert rc == 1 and "weights hash" in line and "--force" in line

    # the identity: the encoder, quant_conv and codebook; not the decoder; equal for the inference export
    inf = VQGANLC.from_pretrained(a.save_pretrained(tmp_path / "inf", inference_only=True))
    assert inf.inference_only and inf.weights_hash() == a.weights_hash()
    with torch.no_grad():
        a.decoder.conv_out.bias.add_(1.0)
    assert a.weights_hash() == inf.weights_hash()
    with torch.no_grad():
        a.quant_conv.bias.add_(1e-3)
    assert a.weights_hash() != inf.weights_hash()  # an in-place change is seen despite the cache

    # a manifest written before the field existed: checked on the architecture only
    from vqgan_lc.tokens import check_compatible

    m = json.loads((out / "manifest.json").read_text())
    del m["tokenizer"]["weights_hash"]
    assert check_compatible(m, b) == []
    m["tokenizer"]["config_hash"] = "0" * 16
    assert check_compatible(m, b) and "config hash" in check_compatible(m, b)[0]


# ----------------------------------------------------------------------------------------- S7 checksums
def test_bit_flips_in_model_safetensors_are_refused(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    blob = bytearray((model_dir / "model.safetensors").read_bytes())
    assert len(cfg["weights_sha256"]) == 64
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    blob[8 + n + 1000] ^= 0x40  # the data region, header intact
    (model_dir / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt or truncated \(its sha256 differs.*"
                                              r"re-download or re-export it"):
        VQGANLC.from_pretrained(model_dir)
    del cfg["weights_sha256"]  # a directory from before the field: loads unchecked
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert isinstance(VQGANLC.from_pretrained(model_dir), VQGANLC)


def test_feature_shards_have_checksums_and_a_flipped_shard_is_redone(photos: Path, tmp_path: Path) -> None:
    ext = PixelExtractor(image_size=32)
    extract_features(photos, ext, tmp_path / "clean", shard_size=4, progress=False, dtype="float32")
    extract_features(photos, ext, tmp_path / "f", shard_size=4, progress=False, dtype="float32")
    entry = FeatureStore.open(tmp_path / "f").shard_entry(1)
    assert entry is not None and len(entry["sha256"]) == 64 and len(entry["sources_digest"]) == 64
    path = tmp_path / "f" / "features-00001.npy"
    blob = bytearray(path.read_bytes())
    blob[-7] ^= 0x10
    path.write_bytes(bytes(blob))
    extract_features(photos, ext, tmp_path / "f", shard_size=4, progress=False, dtype="float32")
    assert tree(tmp_path / "f") == tree(tmp_path / "clean")

    # a replaced source image: its shard is extracted again (and only it), as a fresh store would hold it
    victim = sorted(photos.rglob("*.jpg"))[1]  # source 1: shard 0
    Image.open(sorted(photos.rglob("*.jpg"))[8]).save(victim, "JPEG")
    before = tree(tmp_path / "f")
    extract_features(photos, ext, tmp_path / "f", shard_size=4, progress=False, dtype="float32")
    after = tree(tmp_path / "f")
    extract_features(photos, ext, tmp_path / "fresh", shard_size=4, progress=False, dtype="float32")
    assert after == tree(tmp_path / "fresh")
    assert after["features-00000.npy"] != before["features-00000.npy"]
    assert after["features-00001.npy"] == before["features-00001.npy"]


# ----------------------------------------------------------------------------------------- S2 changed sources
def test_changed_sources_are_encoded_again_and_overwrite_always_re_encodes(
        photos: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    first = tree(out)
    victim = sorted(photos.rglob("*.jpg"))[5]  # source 5: shard 1
    Image.open(sorted(photos.rglob("*.jpg"))[0]).save(victim, "JPEG")  # another picture under the same name
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False)
    second = tree(out)
    fresh = tmp_path / "fresh"
    encode_dataset(model_dir, photos, fresh, options=OPTS, progress=False)
    assert second == tree(fresh)  # identical to encoding the changed folder from scratch
    assert second["shard-00001.npy"] != first["shard-00001.npy"] and second["shard-00000.npy"] == first["shard-00000.npy"]

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npy")}
    encode_dataset(model_dir, photos, out, options=OPTS, progress=False, overwrite=True)
    assert all(p.stat().st_mtime_ns != mtimes[p.name] for p in out.glob("shard-*.npy"))  # every shard redone
    assert tree(out) == second


# ----------------------------------------------------------------------------------------- O3, O5 files
def test_safetensors_files_are_byte_identical_with_sorted_metadata(tmp_path: Path) -> None:
    m = tiny_model()
    blobs = {m.save_pretrained(tmp_path / f"m{i}").joinpath("model.safetensors").read_bytes() for i in range(3)}
    cbs = {save_codebook(tmp_path / f"cb{i}.safetensors", torch.ones(4, 3), {"b": 1, "a": 2}).read_bytes()
           for i in range(3)}
    assert len(blobs) == 1 and len(cbs) == 1
    blob = cbs.pop()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    assert list(header)[0] == "__metadata__" and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert n % 8 == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "cb0.safetensors"))["codebook"], torch.ones(4, 3))


@pytest.fixture
def restore_umask() -> Iterator[None]:
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_files_follow_the_umask(tmp_path: Path, mask: int, restore_umask: None) -> None:
    os.umask(mask)
    d = tiny_model().save_pretrained(tmp_path / "m")
    cb = save_codebook(tmp_path / "cb.safetensors", torch.ones(4, 3))
    atomic_save_safetensors(tmp_path / "x.safetensors", {"x": torch.zeros(2)})
    for p in (d / "model.safetensors", d / "config.json", cb, tmp_path / "x.safetensors"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# ----------------------------------------------------------------------------------------- U8 devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
def test_an_unavailable_device_is_not_called_a_corrupt_file(model_dir: Path, device: str) -> None:
    with pytest.raises(DeviceError) as e:
        VQGANLC.from_pretrained(model_dir, map_location=device)
    assert "corrupt" not in str(e.value) and repr(device) in str(e.value)
    assert ("unavailable" in str(e.value)) == device.startswith("cuda")
    from vqgan_lc.tokenizer import load_tokenizer

    with pytest.raises(DeviceError):
        load_tokenizer(model_dir, map_location=device)
    assert np.isfinite(VQGANLC.from_pretrained(model_dir, map_location="cpu").quant_conv.weight.sum().item())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_evaluate_on_an_unavailable_device_is_one_sentence(token_dir: Path, model_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    rc, err = run_cli(capsys, "evaluate", "--model", model_dir, "--tokens", token_dir, "--out", tmp_path / "eval",
                      "--device", "cuda", "--num-workers", "0")
    line = one_error_line(err, "evaluate")
    assert rc == 1 and "--device cuda is unavailable" in line and "corrupt" not in line
    assert not (tmp_path / "eval").exists()
