"""One sentence per error (issue 14, audit rows U4-U8, O7): operating-system errors by errno, outputs and
devices checked before the work, every numeric option validated, bad YAML / manifests / file lists /
shards / pickles named in one sentence, and the log noise that is gone."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, write_photo_folder

from vqgan_lc._io import check_format, load_failure_reason, reserve_file_space
from vqgan_lc._system import default_num_workers, usable_cpus
from vqgan_lc.cli import _checks
from vqgan_lc.cli.main import main, one_line, os_error_sentence
from vqgan_lc.cli.sample import _top_p, parse_top_k
from vqgan_lc.errors import (
    CheckpointError,
    ConfigError,
    FormatVersionError,
    OutputPathError,
    TokenFormatError,
    VQGANLCError,
)
from vqgan_lc.tokens import EncodeOptions, encode_dataset, read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny"
OPTS = EncodeOptions(image_size=64, batch_size=8, num_workers=0, shard_size=8)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``vqgan-lc ARGV`` in this process: (exit status, stdout, the one error line of stderr)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith(f"vqgan-lc {argv[0]}: error: ")]
    assert "Traceback" not in err
    return rc, out, errors[0] if len(errors) == 1 else err


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model and a 6-row token directory of real photos (8x8 ids)."""
    root = tmp_path_factory.mktemp("errors")
    write_photo_folder(root / "photos", per_class=2)
    vq = tiny_model().save_pretrained(root / "vq")
    encode_dataset(vq, root / "photos", root / "tok", options=OPTS, progress=False)
    return {"root": root, "photos": root / "photos", "vq": vq, "tok": root / "tok"}


# ----------------------------------------------------------------------------------------- U5: OSError by errno
@pytest.mark.parametrize(("code", "expected"), [
    (errno.ENOSPC, "no space left on {d}; free some space or write to another folder, then rerun the same command "
                   "(finished parts are kept)"),
    (errno.EROFS, "{d} is read-only; choose a writable output folder"),
    (errno.EACCES, "permission denied on {d}/out.npy; choose a folder you can write to, or fix its permissions"),
    (errno.ENOENT, "{d}/out.npy does not exist; check the path"),
    (errno.EIO, "{d}/out.npy: Input/output error; check the path and the disk, then rerun"),
])
def test_os_errors_become_one_sentence_by_errno(tmp_path: Path, code: int, expected: str) -> None:
    e = OSError(code, os.strerror(code), str(tmp_path / ".out.npy.tmp-123"))  # a temporary name shows as its target
    assert os_error_sentence(e) == expected.format(d=tmp_path)


def test_out_that_is_a_file_and_build_codebook_out_that_is_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "o"
    f.write_text("mine")
    assert os_error_sentence(FileExistsError(errno.EEXIST, "File exists", str(f))) == \
        f"{f} is a file, not a folder; remove it or choose another output path"
    assert os_error_sentence(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(f / "x" / "y.png"))) == \
        f"{f} is a file, not a folder; remove it or choose another output path"
    (tmp_path / "d").mkdir()
    rename = IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path / ".d.tmp-17449"), str(tmp_path / "d"))
    assert os_error_sentence(rename) == f"{tmp_path / 'd'} is a folder, not a file; give a file path (e.g. {tmp_path / 'd' / 'NAME'})"
    assert os_error_sentence(OSError("no errno at all")) == \
        "no errno at all (an operating-system error); check the paths and the disk, then rerun"
    assert one_line("a\n  b\n\nc") == "a b c"


def test_check_output_refuses_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputPathError, match=r"--out .*file is a file, not a folder; remove it or choose another --out$"):
        _checks.check_output(f, "folder")
    with pytest.raises(OutputPathError, match=r"lies under .*file, which is a file, not a folder"):
        _checks.check_output(f / "sub" / "out", "folder")
    with pytest.raises(OutputPathError, match=r"is a folder, not a file; give a file path such as .*codebook.safetensors$"):
        _checks.check_output(tmp_path, "file")
    _checks.check_output(tmp_path / "new" / "deeper", "folder")  # absent: created later, fine
    _checks.check_output(None, "folder")
    assert isinstance(OutputPathError("x"), OSError) and isinstance(OutputPathError("x"), VQGANLCError)
    # a read-only file system (as root, os.access says yes to everything: simulate what a user sees)
    monkeypatch.setattr(_checks.os, "access", lambda p, mode: False)
    monkeypatch.setattr(_checks.os, "statvfs", lambda p: argparse.Namespace(f_flag=os.ST_RDONLY))
    with pytest.raises(OutputPathError, match=f"^{tmp_path} is read-only; choose a writable --out$"):
        _checks.check_output(tmp_path / "new", "folder")
    monkeypatch.setattr(_checks.os, "statvfs", lambda p: argparse.Namespace(f_flag=0))
    with pytest.raises(OutputPathError, match="is not writable by this user; choose a writable --out$"):
        _checks.check_output(tmp_path / "new", "folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a chmod'ed folder anyway")
def test_read_only_out_folder_is_refused_before_encoding(made: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = cli(["encode", "--model", str(made["vq"]), "--data", str(made["photos"]), "--out",
                          str(ro / "tok"), "--num-workers", "0"], capsys)
    finally:
        ro.chmod(0o755)
    assert rc == 1 and err == f"vqgan-lc encode: error: {ro} is not writable by this user; choose a writable --out"
    assert list(ro.iterdir()) == []


def test_cli_os_errors_are_one_line(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a-file"
    f.write_text("mine")
    for cmd in (["encode", "--model", str(made["vq"]), "--data", str(made["photos"]), "--num-workers", "0"],
                ["decode", "--model", str(made["vq"]), "--tokens", str(made["tok"])],
                ["convert", "--checkpoint", str(FIXTURE / "vqgan_lc_official_format.pth"),
                 "--config", str(FIXTURE / "vq_config.yaml")]):
        rc, _, err = cli([*cmd, "--out", str(f)], capsys)
        assert rc == 1 and err == (f"vqgan-lc {cmd[0]}: error: --out {f} is a file, not a folder; remove it or "
                                   "choose another --out"), err
    assert f.read_text() == "mine"
    # a full disk while the token shards are written (fsync is where a delayed allocation fails)
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "tok"
    rc, _, err = cli(["encode", "--model", str(made["vq"]), "--data", str(made["photos"]), "--out", str(out),
                      "--num-workers", "0", "--image-size", "64"], capsys)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert rc == 1 and err.startswith("vqgan-lc encode: error: no space left on ") and "free some space" in err
    assert not list(out.glob(".*.tmp-*"))  # no temporary file left behind


# ----------------------------------------------------------------------------------------- U4: memmap + full disk
def test_reserve_file_space_turns_a_full_disk_into_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as fh:
        fh.truncate(1 << 20)  # a sparse 1 MiB file, as open_memmap makes
    if hasattr(os, "posix_fallocate"):
        reserve_file_space(p)
        assert os.stat(p).st_blocks * 512 >= 1 << 20  # every block allocated now
    calls: list[tuple[int, int]] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError) as e:
        reserve_file_space(p)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p) and calls == [(0, 1 << 20)]


def test_build_codebook_full_disk_and_truncated_shard_are_one_sentence(
        made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "feat"
    base = ["build-codebook", "--data", str(made["photos"]), "--extractor", "pixels", "--image-size", "64",
            "--pool", "2", "--shard-size", "2", "--workers", "0", "--no-progress"]

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    rc, _, err = cli([*base, "--features-only", str(store)], capsys)
    assert rc == 1 and err == (f"vqgan-lc build-codebook: error: no space left on {store}; free some space or write "
                               "to another folder, then rerun the same command (finished parts are kept)")
    assert not list(store.glob("features-*.npy")) and not list(store.glob(".*.tmp-*"))
    monkeypatch.undo()
    rc, out, _ = cli([*base, "--features-only", str(store)], capsys)
    assert rc == 0 and "features: 6 images" in out
    shard = sorted(store.glob("features-*.npy"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated: "mmap length is greater than file size" before
    rc, _, err = cli(["build-codebook", "--from-features", str(store), "--k", "4", "--out",
                      str(tmp_path / "cb.safetensors"), "--no-progress"], capsys)
    assert rc == 1 and err.startswith(f"vqgan-lc build-codebook: error: {shard} is missing, truncated or not a "
                                      "feature shard (")
    assert err.endswith("); rerun the same build-codebook command to extract it again, or pass --overwrite to "
                        "rebuild the store")
    # --out that is a folder: refused before the extraction and the k-means, not after
    rc, _, err = cli([*base, "--k", "4", "--out", str(tmp_path)], capsys)
    assert rc == 1 and err == (f"vqgan-lc build-codebook: error: --out {tmp_path} is a folder, not a file; give a file "
                               f"path such as {tmp_path / 'codebook.safetensors'}")
    assert not (tmp_path.parent / f"{tmp_path.name}.features").exists()


# ----------------------------------------------------------------------------------------- U6: numeric options
@pytest.mark.parametrize("argv", [
    ["encode", "--image-size", "-64"], ["encode", "--batch-size", "0"], ["encode", "--shard-size", "0"],
    ["encode", "--num-workers", "-1"], ["encode", "--devices", "0"], ["encode", "--cpu-parallel-batches", "-1"],
    ["decode", "--batch-size", "-1"],
    ["evaluate", "--batch-size", "-2"], ["build-codebook", "--k", "-3"], ["build-codebook", "--pool", "0"],
    ["build-codebook", "--batch-size", "0"], ["build-codebook", "--shard-size", "0"], ["build-codebook", "--workers", "-2"],
    ["sample", "--top-p", "2"], ["sample", "--top-p", "0"], ["sample", "--top-k", "-5"], ["sample", "--top-k", "150%"],
    ["sample", "--top-k", "2.5"], ["sample", "--temperature", "-1"], ["sample", "--n", "0"], ["sample", "--n", "-3"],
    ["sample", "--batch-size", "0"], ["sample", "--nar-steps", "0"], ["linear-probe", "--steps", "0"],
    ["linear-probe", "--test-fraction", "0"], ["linear-probe", "--lr", "-1"], ["linear-probe", "--batch-size", "0"],
    ["export-tokens", "--chunk-rows", "0"], ["convert", "--n-head", "0"], ["convert", "--embed-dim", "0"],
    ["encode", "--device", "tpu"], ["sample", "--seed", "-1"], ["build-codebook", "--seed", "-1"],
    ["linear-probe", "--seed", "abc"], ["train-gpt", "--seed", "-1"], ["train-gpt", "--devices", "0"],
    ["train-gpt", "--batch-size", "0"], ["train-gpt", "--lr", "0"], ["evaluate-samples", "--batch-size", "0"],
    ["evaluate-samples", "--isc-splits", "-1"], ["evaluate-samples", "--device", "tpu"], ["demo", "--steps", "0"],
    ["demo", "--seed", "-1"],
])
def test_every_numeric_option_is_checked_by_argparse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.startswith(f"vqgan-lc {argv[0]}: error: argument {argv[1]}: expected ")
    assert repr(argv[2]) in err


def test_the_flag_parsers_accept_what_they_document() -> None:
    assert [parse_top_k(v) for v in ("200", "0.1", "10%", "0", "none", "100%")] == [200, 0.1, 0.1, 0, 0, 0]
    assert [_top_p(v) for v in ("0.8", "1", "none")] == [0.8, 1.0, 1.0]


def test_train_data_module_options_are_config_errors() -> None:
    from vqgan_lc.train.data import DEFAULT_NUM_WORKERS, ImageDataModule

    for kwargs in ({"batch_size": 0}, {"val_batch_size": -1}, {"num_workers": -1}, {"samples_per_epoch": 0},
                   {"image_size": 0}, {"val_fraction": 1.0}):
        with pytest.raises(ConfigError, match=r"^--data\.\w+ must be .*; fix the value$"):
            ImageDataModule("photos", **kwargs)  # type: ignore[arg-type]
    assert ImageDataModule("photos").num_workers == DEFAULT_NUM_WORKERS == min(4, usable_cpus())


def test_config_fields_of_the_wrong_type_and_lightning_refusals(made: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from vqgan_lc.config import ModelConfig, check_fields
    from vqgan_lc.train.gpt import GPTTrainConfig

    with pytest.raises(ConfigError, match=r"^train config field 'lr' has the wrong type \(str 'abc'; expected a number\); "
                                          r"fix the value$"):
        GPTTrainConfig.from_dict({"lr": "abc"})
    with pytest.raises(ConfigError, match=r"field 'objective' has the wrong type \(str 'x'; expected one of 'ar', 'maskgit'\)"):
        GPTTrainConfig.from_dict({"objective": "x"})
    with pytest.raises(ConfigError, match=r"field 'seed' has the wrong type \(bool True; expected an integer\)"):
        GPTTrainConfig.from_dict({"seed": True})
    assert GPTTrainConfig.from_dict({"devices": "auto", "grad_clip": None, "betas": [0.9, 0.9], "lr": 1}).lr == 1
    check_fields(ModelConfig, ModelConfig().to_dict(), "model config")  # a saved config passes as it is
    base = ["train-gpt", "--tokens", str(made["tok"]), "--config", "gpt_tiny_cpu", "--out", str(tmp_path / "g"),
            "--no-progress"]
    rc, _, err = cli([*base, "--train.lr", "abc"], capsys)
    assert rc == 1 and err.endswith("train config field 'lr' has the wrong type (str 'abc'; expected a number); fix the value")
    rc, _, err = cli([*base, "--train.accelerator", "tpu"], capsys)
    assert rc == 1 and err.endswith("train.accelerator 'tpu' is not one vqgan-lc trains on; choose one of: auto, cpu, "
                                    "gpu, cuda, mps")
    rc, _, err = cli([*base, "--train.devices", "0", "--max-steps", "1"], capsys)
    assert rc == 1 and "Trainer(devices=0)" in err and err.endswith("(from the train section); fix train.accelerator, "
                                                                    "train.devices or train.precision")
    assert not (tmp_path / "g" / "model.safetensors").exists()


@pytest.mark.slow
def test_train_batch_size_zero_is_one_sentence(made: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from vqgan_lc.codebook import save_codebook

    cb = save_codebook(tmp_path / "codebook.safetensors", torch.randn(64, 768) * 0.03, {"extractor": "pixels"})
    rc, _, err = cli(["train", "--config", "tiny_cpu", "--data.data", str(made["photos"]), "--data.batch_size", "0",
                      "--codebook", str(cb), "--trainer.default_root_dir", str(tmp_path / "run")], capsys)
    assert rc == 1 and err == "vqgan-lc train: error: --data.batch_size must be an integer >= 1, got 0; fix the value"


# ----------------------------------------------------------------------------------------- U7/U8: one sentence each
def test_encode_device_this_machine_lacks(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = cli(["encode", "--model", str(made["vq"]), "--data", str(made["photos"]), "--out", str(tmp_path / "t"),
                      "--device", "cuda:7"], capsys)
    assert rc == 1 and err == "vqgan-lc encode: error: --device cuda:7 is unavailable: this machine has no usable CUDA GPU; use --device cpu"
    assert not (tmp_path / "t").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^--device cuda:7 is unavailable: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\); pick one of them or cpu$"):
        _checks.check_device("cuda:7")
    _checks.check_device("cuda:1")
    _checks.check_device("cpu")
    _checks.check_device(None)


def test_convert_config_missing_invalid_or_of_another_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(FIXTURE / "vqgan_lc_official_format.pth")
    (tmp_path / "bad.yaml").write_text("model: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "types.yaml").write_text("model:\n  params:\n    ddconfig:\n      ch: many\n")
    expected = {
        "missing.yaml": "config {p} does not exist; pass the official vq_config.yaml or use --preset",
        "bad.yaml": "{p} is not valid YAML (while parsing a flow sequence); pass the official vq_config.yaml or use --preset",
        "list.yaml": "{p} is not an official VQGAN config (needs model.params.ddconfig); pass the official "
                     "vq_config.yaml or use --preset",
    }
    for name, sentence in expected.items():
        p = tmp_path / name
        rc, _, err = cli(["convert", "--checkpoint", ckpt, "--config", str(p), "--out", str(tmp_path / "m")], capsys)
        assert rc == 1 and err == "vqgan-lc convert: error: " + sentence.format(p=p)
    rc, _, err = cli(["convert", "--checkpoint", ckpt, "--config", str(tmp_path / "types.yaml"), "--out",
                      str(tmp_path / "m")], capsys)
    assert rc == 1 and "types.yaml" in err and err.endswith("or use --preset")
    assert not (tmp_path / "m").exists()


def test_train_gpt_config_invalid_yaml_or_shape(made: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from vqgan_lc.cli.train_gpt import load_config

    (tmp_path / "bad.yaml").write_text("train: {lr: [\n")
    (tmp_path / "list.yaml").write_text("- model\n")
    (tmp_path / "section.yaml").write_text("model: 3\n")
    with pytest.raises(VQGANLCError, match=r"bad.yaml is not valid YAML \(.*\); fix it or pass a shipped config"):
        load_config(str(tmp_path / "bad.yaml"), [])
    with pytest.raises(VQGANLCError, match=r"list.yaml holds a YAML list, not the mapping of `model:` and `train:`"):
        load_config(str(tmp_path / "list.yaml"), [])
    with pytest.raises(VQGANLCError, match=r"section.yaml: section model is a YAML int, not a mapping"):
        load_config(str(tmp_path / "section.yaml"), [])
    rc, _, err = cli(["train-gpt", "--tokens", str(made["tok"]), "--config", str(tmp_path / "list.yaml"),
                      "--out", str(tmp_path / "g")], capsys)
    assert rc == 1 and err.startswith("vqgan-lc train-gpt: error: ") and not (tmp_path / "g").exists()


def _edited(tok: Path, tmp_path: Path, name: str, edit: object) -> Path:
    d = tmp_path / name
    shutil.copytree(tok, d)
    m = json.loads((d / "manifest.json").read_text())
    edit(m, d)  # type: ignore[operator]
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_damaged_manifests_are_one_sentence(made: dict[str, Path], tmp_path: Path) -> None:
    rebuild = "rerun the `vqgan-lc encode` command that made the directory to rebuild it"
    cases = {
        "no-labels": (lambda m, d: (d / "labels.npy").unlink(), "{d} has no labels.npy (its manifest names it); " + rebuild),
        "no-paths": (lambda m, d: (d / "paths.txt").unlink(), "{d} has no paths.txt (its manifest names it); " + rebuild),
        "no-shards": (lambda m, d: m.pop("shards"), "{d}/manifest.json lacks the field 'shards' (a list of shard "
                      "records); " + rebuild),
        "shards-str": (lambda m, d: m.update(shards="x"), "{d}/manifest.json: field 'shards' has the wrong type "
                       "(expected a list of shard records); " + rebuild),
        "shard-int": (lambda m, d: m.update(shards=[3]), "{d}/manifest.json: field 'shards[0]' has the wrong type "
                      "(expected an object with file, rows and sha256); " + rebuild),
        "rows-str": (lambda m, d: m["shards"][0].update(rows="6"), "{d}/manifest.json: field 'shards[0].rows' has the "
                     "wrong type (expected an integer >= 0); " + rebuild),
        "grid": (lambda m, d: m.update(grid=[8]), "{d}/manifest.json: field 'grid' has the wrong type (expected a list "
                 "of two positive integers); " + rebuild),
        "tokenizer": (lambda m, d: m.update(tokenizer=None), "{d}/manifest.json: field 'tokenizer' has the wrong type "
                      "(expected an object with codebook_size and config_hash); " + rebuild),
    }
    for name, (edit, sentence) in cases.items():
        d = _edited(made["tok"], tmp_path, name, edit)
        with pytest.raises(TokenFormatError) as e:
            read_manifest(d)
        assert str(e.value) == sentence.format(d=d), name


def test_format_version_of_the_wrong_type_is_not_an_upgrade(made: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    d = _edited(made["tok"], tmp_path, "fv", lambda m, d: m.update(format_version="1"))
    with pytest.raises(TokenFormatError) as e:
        read_manifest(d)
    assert not isinstance(e.value, FormatVersionError)
    assert str(e.value) == (f"{d}/manifest.json: field 'format_version' has the wrong type (str '1', expected an "
                            "integer); the file was edited or damaged: restore it or write it again")
    rc, _, err = cli(["info", str(d)], capsys)
    assert rc == 1 and "the wrong type" in err and "upgrade" not in err.lower()
    with pytest.raises(CheckpointError, match="'format_version' has the wrong type \\(bool True"):
        check_format({"format": "f", "format_version": True}, "p", "f", 1, what="x", error=CheckpointError)
    with pytest.raises(FormatVersionError, match="Upgrade"):
        check_format({"format": "f", "format_version": 2}, "p", "f", 1, what="x", error=CheckpointError)


def test_empty_token_directory_and_grid_mismatch(made: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "unreadable"
    bad.mkdir()
    (bad / "a.png").write_text("version https://git-lfs.github.com/spec/v1\n")
    empty = tmp_path / "empty"
    encode_dataset(made["vq"], bad, empty, options=OPTS, progress=False)
    assert read_manifest(empty)["num_rows"] == 0
    gpt = tmp_path / "gpt"
    rc, _, _ = cli(["train-gpt", "--tokens", str(made["tok"]), "--config", "gpt_tiny_cpu", "--out", str(gpt),
                    "--max-steps", "1", "--no-progress"], capsys)
    assert rc == 0
    sentence = (f"{empty} holds no token rows (every image was skipped, or the folder was empty); encode a folder of "
                "readable images into it first")
    rc, _, err = cli(["train-gpt", "--tokens", str(empty), "--config", "gpt_tiny_cpu", "--out", str(tmp_path / "g2")],
                     capsys)
    assert rc == 1 and err == f"vqgan-lc train-gpt: error: {sentence}"
    rc, _, err = cli(["linear-probe", "--gpt", str(gpt), "--tokens", str(empty)], capsys)
    assert rc == 1 and err == f"vqgan-lc linear-probe: error: {sentence}"
    big = tmp_path / "tok128"  # the same model at 128 px: 16x16 ids, hashes equal
    encode_dataset(made["vq"], made["photos"], big, options=EncodeOptions(image_size=128, batch_size=8, num_workers=0),
                   progress=False)
    rc, _, err = cli(["linear-probe", "--gpt", str(gpt), "--tokens", str(big)], capsys)
    assert rc == 1 and err == (f"vqgan-lc linear-probe: error: --tokens {big} holds 16x16 token grids but the GPT {gpt} "
                               "was trained on 8x8 grids; encode the images at the GPT's image size (--image-size) "
                               "or probe a GPT trained on these tokens")


class _RunsCode:
    """Unpickling it would run a shell command (it never is)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_malicious_pickle_sentence_has_no_advice_to_turn_safety_off(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode(f"touch {marker}"), "state_dict": {}}, evil)
    try:
        torch.load(evil, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch raises
        reason = load_failure_reason(e)
    assert reason.startswith("it holds a pickled Python object, not only tensors (") and "system" in reason
    assert "weights_only" not in reason and "Re-running" not in reason
    for argv in (["convert", "--checkpoint", str(evil), "--config", str(FIXTURE / "vq_config.yaml"), "--out",
                  str(tmp_path / "m")],
                 ["export", str(evil), "--out", str(tmp_path / "m")]):
        rc, _, err = cli(argv, capsys)
        assert rc == 1 and "it holds a pickled Python object" in err
        assert "weights_only" not in err and "Re-running" not in err and "will likely succeed" not in err
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- O7: noise
def test_faiss_loader_lines_are_silenced_and_workers_fit_the_cores(caplog: pytest.LogCaptureFixture) -> None:
    from vqgan_lc.codebook.kmeans import import_faiss

    loader = logging.getLogger("faiss.loader")
    level = loader.level
    loader.setLevel(logging.NOTSET)
    try:
        assert import_faiss().__name__ == "faiss"
        assert loader.level == logging.WARNING
        loader.setLevel(logging.DEBUG)  # a level the user chose is kept
        import_faiss()
        assert loader.level == logging.DEBUG
    finally:
        loader.setLevel(level)
    assert default_num_workers() == min(4, usable_cpus()) and default_num_workers(1) == 1
    from vqgan_lc.cli.main import build_parser

    args = build_parser(["build-codebook"]).parse_args(["build-codebook", "--k", "4"])
    assert args.workers == min(4, usable_cpus())

