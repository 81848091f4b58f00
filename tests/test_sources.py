"""Input sources (folder, WebDataset tars, HF datasets), many processes, latents and augmented variants."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgan_lc import VQGANLC
from vqgan_lc.cli.main import main
from vqgan_lc.data import Preprocessing, list_images, load_rgb
from vqgan_lc.errors import ImageSourceError
from vqgan_lc.sources import open_source
from vqgan_lc.tokens import (
    EncodeError,
    EncodeOptions,
    TokenDataset,
    encode_dataset,
    open_latents,
    open_tokens,
)
from vqgan_lc.tokens.encode import process_topology
from vqgan_lc.tokens.latents import five_crop, ten_crop_size

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4)
REPO = Path(__file__).resolve().parents[1]


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def payload(d: Path) -> dict[str, bytes]:
    """The files that carry ids/latents/labels (encode.json and the manifest also name the source kind)."""
    return {k: v for k, v in tree_bytes(d).items() if k.endswith(".npy")}


def write_tars(photos: Path, out: Path, per_tar: int = 4) -> str:
    """The folder's images in its sorted order as WebDataset tars ``part-000000.tar``...; returns the pattern."""
    images = list_images(photos)
    out.mkdir(parents=True, exist_ok=True)
    n_tars = (len(images) + per_tar - 1) // per_tar
    for t in range(n_tars):
        with tarfile.open(out / f"part-{t:06d}.tar", "w") as tf:
            for i in range(t * per_tar, min((t + 1) * per_tar, len(images))):
                key = images.paths[i].replace("/", "_").rsplit(".", 1)[0]
                for ext, data in (("jpg", (photos / images.paths[i]).read_bytes()),
                                  ("cls", str(images.labels[i]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(out / f"part-{{000000..{n_tars - 1:06d}}}.tar")


def write_hf(photos: Path, out: Path) -> Path:
    import datasets

    images = list_images(photos)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(images.classes))})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": (photos / p).read_bytes(), "path": None} for p in images.paths],
         "label": list(images.labels)}, features=feats)
    ds.save_to_disk(str(out))
    return out


@pytest.fixture
def sources(photos: Path, tmp_path: Path) -> dict[str, str]:
    return {"folder": str(photos), "wds": "wds:" + write_tars(photos, tmp_path / "tars"),
            "hf": "hf:" + str(write_hf(photos, tmp_path / "hfds"))}


# ----------------------------------------------------------------------------------------- sources
def test_sources_list_the_same_images_labels_and_pixels(photos: Path, sources: dict[str, str]) -> None:
    folder = open_source(sources["folder"])
    tars, hf = open_source(sources["wds"]), open_source(sources["hf"])
    assert (folder.kind, tars.kind, hf.kind) == ("folder", "wds", "hf")
    assert len(tars) == len(hf) == len(folder) == 9
    assert tars.paths[0] == "part-000000.tar/class_0_astronaut_img_000" and tars.paths[4].startswith("part-000001.tar/")
    assert hf.paths[3] == "train/00000003"
    assert tars.labels == hf.labels == folder.labels == (0, 0, 0, 1, 1, 1, 2, 2, 2)
    assert hf.classes == folder.classes and tars.classes == ("0", "1", "2")
    for i in (0, 5, 8):
        ref = np.asarray(folder.load(i))
        assert np.array_equal(np.asarray(tars.load(i)), ref) and np.array_equal(np.asarray(hf.load(i)), ref)
    assert set(tars.record(5)) == {"tar", "size", "mtime_ns", "offset"} and tars.record(5)["tar"] == "part-000001.tar"
    assert hf.record(2)["row"] == 2 and len(hf.record(2)["fingerprint"]) >= 8
    assert set(folder.record(0)) == {"size", "mtime_ns"}
    sub = tars.subset([8, 1])
    assert sub.paths == (tars.paths[8], tars.paths[1]) and np.array_equal(np.asarray(sub.load(0)), np.asarray(folder.load(8)))


def test_bad_source_specs_say_what_to_do(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(ImageSourceError, match="names no tar|does not exist"):
        open_source(f"wds:{tmp_path}/none-{{0..1}}.tar")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageSourceError, match="truncated or not an uncompressed tar"):
        open_source(f"wds:{tmp_path}/bad.tar")
    with pytest.raises(ImageSourceError, match="--file-list applies to an image folder only"):
        open_source(f"wds:{tmp_path}/bad.tar", tmp_path / "list.txt")


@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_tar_and_dataset_inputs_equal_the_folder_ids(sources: dict[str, str], model_dir: Path, tmp_path: Path,
                                                     kind: str) -> None:
    ref = encode_dataset(model_dir, sources["folder"], tmp_path / "folder", options=OPTS, progress=False)
    got = encode_dataset(model_dir, sources[kind], tmp_path / kind, options=OPTS, progress=False)
    assert got["num_rows"] == ref["num_rows"] == 9 and got["source"]["kind"] == kind and "source" not in ref
    a, b = open_tokens(tmp_path / "folder"), open_tokens(tmp_path / kind)
    assert np.array_equal(a[:], b[:]) and np.array_equal(a.labels, b.labels)
    assert len(np.unique(a[:])) > 5
    assert payload(tmp_path / kind)["shard-00001.npy"] == payload(tmp_path / "folder")["shard-00001.npy"]


def test_corrupt_tar_member_is_skipped_and_recorded(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    bad = photos / "class_1_coffee" / "img_002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    pattern = write_tars(photos, tmp_path / "tars")
    with tarfile.open(tmp_path / "tars" / "part-000002.tar", "a") as tf:  # a sample with a class but no image
        info = tarfile.TarInfo("zz_no_image.cls")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"1"))
    m = encode_dataset(model_dir, "wds:" + pattern, tmp_path / "tok", options=OPTS, progress=False)
    assert m["num_rows"] == 8 and m["num_skipped"] == 2
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"part-000001.tar/class_1_coffee_img_002", "part-000002.tar/zz_no_image"}
    assert "no image member" in skipped["part-000002.tar/zz_no_image"]
    ref = encode_dataset(model_dir, photos, tmp_path / "ref", options=OPTS, progress=False)
    assert ref["num_rows"] == 8 and np.array_equal(open_tokens(tmp_path / "ref")[:], open_tokens(tmp_path / "tok")[:])


def test_cli_encode_reads_tars(sources: dict[str, str], model_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", "--model", str(model_dir), "--data", sources["wds"], "--out", str(tmp_path / "tok"),
                 "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--latents", "float16",
                 "--augment", "flip"]) == 0
    assert "9 images as 8x8 tokens" in capsys.readouterr().out
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert m["latents"]["row_shape"] == [2, 8, 8, 8] and m["augment"]["mode"] == "flip"
    assert open_tokens(tmp_path / "tok")[0].shape == (2, 8, 8) and open_latents(tmp_path / "tok")[8].shape == (2, 8, 8, 8)
    assert main(["encode", "--model", str(model_dir), "--data", sources["wds"], "--out", str(tmp_path / "x"),
                 "--shard-index", "0"]) == 1
    assert "--shard-index and --num-shards together" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- defaults
def test_python_api_and_cli_share_the_image_size(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    model = VQGANLC.from_pretrained(model_dir)
    size = model.preprocessing["image_size"]
    m = encode_dataset(model_dir, photos, tmp_path / "py", options=EncodeOptions(num_workers=0), progress=False)
    assert main(["encode", "--model", str(model_dir), "--data", str(photos), "--out", str(tmp_path / "cli"),
                 "--num-workers", "0"]) == 0
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert m["grid"] == cli["grid"] == list(model.latent_shape(size, size))
    assert m["preprocessing"]["image_size"] == cli["preprocessing"]["image_size"] == size
    assert payload(tmp_path / "py") == payload(tmp_path / "cli")


# ----------------------------------------------------------------------------------------- many processes
def test_topology_from_options_torchrun_and_slurm() -> None:
    assert process_topology(EncodeOptions(), {}).world == 1
    t = process_topology(EncodeOptions(), {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (t.rank, t.world, t.local_rank, t.launcher) == (3, 8, 1, "torchrun")
    t = process_topology(EncodeOptions(), {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"})
    assert (t.rank, t.world, t.local_rank, t.launcher) == (5, 6, 2, "slurm")
    t = process_topology(EncodeOptions(shard_index=1, num_shards=4), {"RANK": "0", "WORLD_SIZE": "2"})
    assert (t.rank, t.world, t.launcher) == (1, 4, "job-array")
    assert process_topology(EncodeOptions(), {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"
    with pytest.raises(EncodeError, match="is not in"):
        process_topology(EncodeOptions(), {"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="together"):
        EncodeOptions(shard_index=0)


def test_job_array_tasks_write_the_one_process_directory(photos: Path, model_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean"
    encode_dataset(model_dir, photos, clean, options=OPTS, progress=False)
    out = tmp_path / "array"
    base = ["encode", "--model", str(model_dir), "--data", str(photos), "--out", str(out), "--batch-size", "4",
            "--num-workers", "0", "--shard-size", "4", "--image-size", "64"]
    assert main([*base, "--shard-index", "1", "--num-shards", "2"]) == 0
    assert "1 of 3 shards finished" in capsys.readouterr().out
    assert not (out / "manifest.json").exists() and (out / "shard-00001.npy").exists()
    assert not (out / "shard-00000.npy").exists() and not (out / "shard-00002.npy").exists()
    assert main([*base, "--shard-index", "0", "--num-shards", "2"]) == 0  # the last task finalizes
    assert tree_bytes(out) == tree_bytes(clean)
    with pytest.raises(EncodeError, match="job array"):
        encode_dataset(model_dir, photos, out, options=EncodeOptions(image_size=64, shard_index=0, num_shards=2),
                       overwrite=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_ranks_write_the_one_process_directory(sources: dict[str, str], model_dir: Path,
                                                        tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    encode_dataset(model_dir, sources["wds"], clean, options=OPTS, progress=False)
    out = tmp_path / "ranks"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vqgan_lc.cli.main", "encode", "--model", str(model_dir), "--data", sources["wds"],
             "--out", str(out), "--batch-size", "4", "--num-workers", "0", "--shard-size", "4", "--image-size", "64",
             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert tree_bytes(out) == tree_bytes(clean)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "wds", "hf"])
def test_killed_run_resumes_byte_identical_for_each_source(sources: dict[str, str], model_dir: Path, tmp_path: Path,
                                                           kind: str) -> None:
    opts = "EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, latents='float16')"
    same = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, latents="float16")
    clean = tmp_path / "clean"
    encode_dataset(model_dir, sources[kind], clean, options=same, progress=False)
    broken = tmp_path / "broken"
    code = (
        "import time, torch; from vqgan_lc.tokens import encode_dataset, EncodeOptions\n"
        "torch.set_num_threads(1)  # as this test: float latents depend on the intra-op thread count\n"
        "import vqgan_lc.tokens.encode as e\n"
        "w = e.write_shard\n"
        "def slow(*a, **k):\n"
        "    w(*a, **k); time.sleep(60)\n"
        "e.write_shard = slow\n"
        f"encode_dataset({str(model_dir)!r}, {sources[kind]!r}, {str(broken)!r}, options={opts}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 300
    while not (broken / "shard-00000.json").exists():
        assert proc.poll() is None and time.time() < deadline, "child died before its first shard"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "manifest.json").exists() and not (broken / "shard-00001.npy").exists()
    (broken / ".latents-00001.npy.tmp-999").write_bytes(b"partial")
    (broken / "latents-00002.npy").write_bytes(b"half a shard")
    encode_dataset(model_dir, sources[kind], broken, options=same, progress=False)
    assert tree_bytes(broken) == tree_bytes(clean)


# ----------------------------------------------------------------------------------------- latents, variants
def _inputs(photos: Path, size: int = 64) -> torch.Tensor:
    pre = Preprocessing(size)
    return torch.stack([pre(load_rgb(photos / p)) for p in list_images(photos).paths])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_latents_equal_encode_latents(photos: Path, model_dir: Path, tmp_path: Path, dtype: str) -> None:
    opts = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, latents=dtype)  # type: ignore[arg-type]
    m = encode_dataset(model_dir, photos, tmp_path / "tok", options=opts, progress=False)
    model = VQGANLC.from_pretrained(model_dir)
    x = _inputs(photos)
    with torch.no_grad():
        z = model.encode_latents(x).numpy()
    lat = open_latents(tmp_path / "tok")
    assert len(lat) == 9 and lat[3].shape == z.shape[1:] and lat[3].dtype == np.dtype(dtype)
    got = np.stack([lat[i] for i in range(9)]).astype(np.float32)
    # fp16 rounding, or for fp32 the float rounding of a batch of 4 against one of 9
    tol = (1e-3 if dtype == "float16" else 1e-5) * np.abs(z).max()
    assert np.abs(got - z).max() <= tol and np.abs(z).max() > 0.01
    assert np.array_equal(open_tokens(tmp_path / "tok")[:].astype(np.int64), model.encode(torch.from_numpy(x.numpy())).numpy())
    per_channel = np.moveaxis(z.astype(np.float64), 1, 0).reshape(z.shape[1], -1)
    assert np.allclose(lat.mean, per_channel.mean(1), atol=1e-5) and np.allclose(lat.std, per_channel.std(1), atol=1e-5)
    assert lat.scale_factor == pytest.approx(1.0 / z.astype(np.float64).std(), rel=1e-5)
    assert m["latents"]["row_shape"] == list(z.shape[1:]) and m["latents"]["dtype"] == dtype


def test_flip_variants_are_the_tokens_of_flipped_images(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    opts = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, augment="flip", latents="float32")
    m = encode_dataset(model_dir, photos, tmp_path / "tok", options=opts, progress=False)
    assert m["augment"] == {"mode": "flip", "variants": ["center", "center-flipped"]}
    tok = open_tokens(tmp_path / "tok")
    assert tok[:].shape == (9, 2, 8, 8) and tok.row_shape == (2, 8, 8)
    model = VQGANLC.from_pretrained(model_dir)
    x = _inputs(photos)
    ids = tok[:].astype(np.int64)
    assert np.array_equal(ids[:, 0], model.encode(x).numpy())
    assert np.array_equal(ids[:, 1], model.encode(x.flip(-1)).numpy())
    assert not np.array_equal(ids[:, 0], ids[:, 1])
    assert open_latents(tmp_path / "tok")[0].shape == (2, 8, 8, 8)
    # One variant per item, drawn from (seed, epoch, index): reproducible, changing with the epoch.
    ds = TokenDataset(tmp_path / "tok", seed=1)
    first = [ds.variant_of(i) for i in range(9)]
    assert first == [TokenDataset(tmp_path / "tok", seed=1).variant_of(i) for i in range(9)]
    ds.set_epoch(1)
    assert any(ds.variant_of(i) != first[i] for i in range(9))
    item, label = ds[4]
    assert item.shape == (8, 8) and torch.equal(item, torch.from_numpy(ids[4, ds.variant_of(4)])) and label == 1
    assert TokenDataset(tmp_path / "tok", variant="all")[4][0].shape == (2, 8, 8)
    from vqgan_lc.train.gpt import GPTTokenDataset

    gds = GPTTokenDataset(tmp_path / "tok")  # the GPT trainer draws one variant per read
    torch.manual_seed(0)
    drawn = {tuple(gds[4][0].tolist()) for _ in range(16)}
    assert drawn == {tuple(ids[4, 0].reshape(-1).tolist()), tuple(ids[4, 1].reshape(-1).tolist())}
    assert torch.equal(TokenDataset(tmp_path / "tok", variant=1)[2][0], torch.from_numpy(ids[2, 1]))


def test_ten_crop_variants(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    opts = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4, augment="ten-crop")
    m = encode_dataset(model_dir, photos, tmp_path / "tok", options=opts, progress=False)
    assert m["augment"]["crop_size"] == ten_crop_size(64) == 70 and len(m["augment"]["variants"]) == 10
    ids = open_tokens(tmp_path / "tok")[:].astype(np.int64)
    assert ids.shape == (9, 10, 8, 8)
    big = _inputs(photos, 70)
    crops = [torch.stack(five_crop(b, 64)) for b in big]
    model = VQGANLC.from_pretrained(model_dir)
    assert np.array_equal(ids[:, 4], model.encode(torch.stack([c[4] for c in crops])).numpy())  # centre
    assert np.array_equal(ids[:, 1], model.encode(big[:, :, :64, 6:]).numpy())  # top-right corner
    assert np.array_equal(ids[:, 9], model.encode(torch.stack([c[4] for c in crops]).flip(-1)).numpy())


# ----------------------------------------------------------------------------------------- other commands
def test_feature_store_training_data_and_evaluate_take_every_source(sources: dict[str, str], model_dir: Path,
                                                                    tmp_path: Path) -> None:
    from vqgan_lc.codebook.build import extract_features
    from vqgan_lc.extractors import PixelExtractor
    from vqgan_lc.metrics import EvaluateOptions, evaluate
    from vqgan_lc.train.data import ImageDataModule

    feats = {k: extract_features(v, PixelExtractor(image_size=32), tmp_path / f"{k}.features", progress=False)
             for k, v in sources.items()}
    ref = np.concatenate([feats["folder"].load_shard(i) for i in range(feats["folder"].num_shards)])
    for k in ("wds", "hf"):
        got = np.concatenate([feats[k].load_shard(i) for i in range(feats[k].num_shards)])
        assert got.shape == ref.shape and np.array_equal(got, ref), k
    batches = {}
    for k, v in sources.items():
        dm = ImageDataModule(v, image_size=32, batch_size=9, num_workers=0)
        dm.setup("fit")
        batches[k] = next(iter(dm.val_dataloader()))
    for k in ("wds", "hf"):
        assert torch.equal(batches[k]["images"], batches["folder"]["images"])
        assert batches[k]["labels"].tolist() == batches["folder"]["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    opts = EvaluateOptions(batch_size=4, num_workers=0, image_size=64)
    reports = {k: evaluate(model_dir, v, tmp_path / f"rep-{k}", options=opts, progress=False) for k, v in sources.items()}
    psnr = {k: r["metrics"]["psnr_y"]["value"] for k, r in reports.items()}
    assert psnr["wds"] == psnr["hf"] == psnr["folder"] and math.isfinite(psnr["folder"])
