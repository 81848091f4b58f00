"""``EncodeOptions(cpu_parallel_batches=N)`` / ``vqgan-lc encode --cpu-parallel-batches N``: N batches at
once on a CPU, each decoded and encoded by its own thread. Same directory as the default pipeline (the
tiny model's ids do not depend on the intra-op thread count)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.tokens import EncodeError, EncodeOptions, encode_dataset


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    write_photo_folder(tmp_path / "photos", per_class=4, size=96)
    return tmp_path / "photos"


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def opts(**kw) -> EncodeOptions:  # noqa: ANN003
    return EncodeOptions(**{"image_size": 64, "batch_size": 2, "num_workers": 0, "shard_size": 5, **kw})


@pytest.mark.parametrize("draft", [False, True])
def test_parallel_batches_write_the_same_directory(photos: Path, model_dir: Path, tmp_path: Path,
                                                   draft: bool) -> None:
    bad = photos / "class_1_coffee" / "img_002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # skipped and recorded the same way on both paths
    threads = torch.get_num_threads()
    one = encode_dataset(model_dir, photos, tmp_path / "one", options=opts(jpeg_draft=draft), progress=False)
    par = encode_dataset(model_dir, photos, tmp_path / "par", options=opts(jpeg_draft=draft, cpu_parallel_batches=3),
                         progress=False)
    assert one == par and one["num_rows"] == 11 and one["num_skipped"] == 1
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "par")
    # The call leaves the process as it found it.
    assert torch.get_num_threads() == threads and not torch.is_inference_mode_enabled()


def test_parallel_batches_fail_naming_the_file_and_keep_finished_shards(
    photos: Path, model_dir: Path, tmp_path: Path
) -> None:
    bad = photos / "class_2_chelsea" / "img_001.jpg"  # source index 9: shard 1 (5..10)
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    threads = torch.get_num_threads()
    with pytest.raises(EncodeError, match="class_2_chelsea/img_001.jpg"):
        encode_dataset(model_dir, photos, tmp_path / "tok", options=opts(on_error="fail", cpu_parallel_batches=2),
                       progress=False)
    assert (tmp_path / "tok" / "shard-00000.json").exists()
    assert not (tmp_path / "tok" / "shard-00001.npy").exists() and not (tmp_path / "tok" / "manifest.json").exists()
    assert torch.get_num_threads() == threads


def test_cli_flag_and_validation(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    encode_dataset(model_dir, photos, tmp_path / "one", options=opts(), progress=False)
    assert main(["encode", "--model", str(model_dir), "--data", str(photos), "--out", str(tmp_path / "cli"),
                 "--image-size", "64", "--batch-size", "2", "--shard-size", "5", "--cpu-parallel-batches", "2",
                 "--device", "cpu"]) == 0
    assert tree_bytes(tmp_path / "cli") == tree_bytes(tmp_path / "one")
    with pytest.raises(ValueError, match="cpu_parallel_batches"):
        EncodeOptions(cpu_parallel_batches=-1)
