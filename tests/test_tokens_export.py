"""vqgan-lc export-tokens: every target reads back equal to the token directory (ids, labels, order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model, write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.errors import ExportError
from vqgan_lc.tokens import EncodeOptions, encode_dataset, open_tokens
from vqgan_lc.tokens.export import (
    EXPORT_RECORD,
    EXPORT_TARGETS,
    MANIFEST_KEY,
    export_tokens,
    memmap_dtype,
    read_export,
)

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = EncodeOptions(image_size=64, batch_size=4, num_workers=0, shard_size=4)


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real token directory: 9 photos in 3 classes, 3 shards, tiny model (8x8 grid, 512 codes)."""
    root = tmp_path_factory.mktemp("tok")
    write_photo_folder(root / "photos", per_class=3)
    model = tiny_model().save_pretrained(root / "model")
    encode_dataset(model, root / "photos", root / "tokens", options=OPTS, progress=False)
    return root / "tokens"


def expected(token_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    t = open_tokens(token_dir)
    return np.asarray(t[:]), np.asarray(t.labels), list(t.paths)


@pytest.mark.parametrize("target", EXPORT_TARGETS)
def test_export_reads_back_equal(token_dir: Path, tmp_path: Path, target: str) -> None:
    ids, labels, paths = expected(token_dir)
    assert ids.shape == (9, 8, 8) and len(np.unique(ids)) > 1 and sorted(set(labels.tolist())) == [0, 1, 2]
    out = export_tokens(token_dir, tmp_path / "out", target, chunk_rows=2)  # chunks cross shard edges
    back = read_export(out)
    np.testing.assert_array_equal(back.ids, ids)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.paths == paths
    assert back.record["target"] == target and back.record["num_rows"] == 9
    assert back.record["manifest"] == open_tokens(token_dir).manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_llamagen_layout_shapes_and_dtypes(token_dir: Path, tmp_path: Path) -> None:
    ids, labels, _ = expected(token_dir)
    out = export_tokens(token_dir, tmp_path / "lg", "llamagen")
    codes = sorted((out / "codes").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in codes] == [f"{i}.npy" for i in range(9)]
    for i in range(9):
        c = np.load(out / "codes" / f"{i}.npy")
        lab = np.load(out / "labels" / f"{i}.npy")
        assert c.shape == (1, 1, 64) and c.dtype == np.int64
        assert lab.shape == (1,) and lab.dtype == np.int64 and int(lab[0]) == int(labels[i])
        np.testing.assert_array_equal(c[0, 0], ids[i].reshape(-1))  # raster order
    prefixed = export_tokens(token_dir, tmp_path / "lg2", "llamagen", llamagen_prefix="imagenet64")
    assert (prefixed / "imagenet64_codes" / "8.npy").is_file() and (prefixed / "imagenet64_labels" / "0.npy").is_file()


def test_memmap_layout_dtype_and_eos(token_dir: Path, tmp_path: Path) -> None:
    ids, labels, _ = expected(token_dir)
    out = export_tokens(token_dir, tmp_path / "mm", "memmap")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["row_length"] == 64 and meta["row_stride"] == 64
    assert meta["eos"] == {"policy": "none", "id": None} and meta["vocab_size"] == 512
    flat = np.memmap(out / "tokens.bin", dtype=np.uint16, mode="r")
    assert flat.size == 9 * 64
    np.testing.assert_array_equal(flat.reshape(9, 64), ids.reshape(9, 64))
    np.testing.assert_array_equal(np.load(out / "labels.npy"), labels)

    out = export_tokens(token_dir, tmp_path / "mm-eos", "memmap", eos=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["row_stride"] == 65 and meta["eos"] == {"policy": "after-each-row", "id": 512}
    rows = np.fromfile(out / "tokens.bin", dtype=np.uint16).reshape(9, 65)
    assert (rows[:, 64] == 512).all()
    np.testing.assert_array_equal(rows[:, :64], ids.reshape(9, 64))
    np.testing.assert_array_equal(read_export(out).ids, ids)


def test_memmap_dtype_switches_to_uint32_past_65535() -> None:
    assert memmap_dtype(65536, eos=False) == np.uint16  # ids 0..65535
    assert memmap_dtype(65536, eos=True) == np.uint32  # the EOS id 65536 does not fit
    assert memmap_dtype(100_000, eos=False) == np.uint32
    assert memmap_dtype(512, eos=True) == np.uint16


def test_memmap_uint32_for_a_100k_codebook(token_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    shutil.copytree(token_dir, big)
    manifest = json.loads((big / "manifest.json").read_text())
    manifest["tokenizer"]["codebook_size"] = 100_000
    (big / "manifest.json").write_text(json.dumps(manifest))
    out = export_tokens(big, tmp_path / "mm", "memmap")
    assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"
    assert (out / "tokens.bin").stat().st_size == 9 * 64 * 4
    np.testing.assert_array_equal(read_export(out).ids, expected(token_dir)[0])


def test_parquet_and_hf_carry_the_manifest(token_dir: Path, tmp_path: Path) -> None:
    import datasets
    import pyarrow.parquet as pq

    manifest = open_tokens(token_dir).manifest
    pqo = export_tokens(token_dir, tmp_path / "pq", "parquet")
    meta = pq.read_schema(pqo / "tokens.parquet").metadata
    assert json.loads(meta[MANIFEST_KEY.encode()]) == manifest
    hfo = export_tokens(token_dir, tmp_path / "hf", "hf")
    ds = datasets.load_from_disk(str(hfo / "dataset"))
    assert ds.column_names == ["ids", "label", "path"] and len(ds) == 9
    assert json.loads(ds.info.description) == manifest
    assert ds.features["ids"].feature.dtype == "uint32"


def test_refuses_non_empty_out_and_overwrite_replaces(token_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="--overwrite"):
        export_tokens(token_dir, out, "memmap")
    assert (out / "keep.txt").read_text() == "x"
    export_tokens(token_dir, out, "memmap", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / EXPORT_RECORD).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    export_tokens(token_dir, empty, "memmap")  # an empty folder is fine
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_tokens(token_dir, tmp_path / "afile", "memmap")
    with pytest.raises(ExportError, match="unknown export target"):
        export_tokens(token_dir, tmp_path / "x", "csv")  # type: ignore[arg-type]


def test_failed_export_leaves_out_untouched(token_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqgan_lc.tokens import export as ex

    out = tmp_path / "out"
    export_tokens(token_dir, out, "memmap")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a: object, **k: object) -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "_write_memmap", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_tokens(token_dir, out, "memmap", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_optional_package_is_named(token_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake(name: str, *a: object, **k: object) -> object:
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ExportError, match=r"needs the pyarrow package.*vqgan-lc\[export\]"):
        export_tokens(token_dir, tmp_path / "pq", "parquet")
    assert not (tmp_path / "pq").exists()


def test_cli_export_tokens(token_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["export-tokens", "--tokens", str(token_dir), "--to", "parquet", "--out", str(out)]) == 0
    np.testing.assert_array_equal(read_export(out).ids, expected(token_dir)[0])
    assert main(["export-tokens", "--tokens", str(token_dir), "--to", "parquet", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export-tokens", "--tokens", str(token_dir), "--to", "hf", "--out", str(tmp_path / "x"),
                 "--eos"]) == 1
    assert main(["export-tokens", "--tokens", str(token_dir), "--to", "memmap", "--out", str(out),
                 "--overwrite", "--eos"]) == 0
    assert json.loads((out / "meta.json").read_text())["eos"]["id"] == 512


def test_orphans_of_a_killed_export_are_removed(token_dir: Path, tmp_path: Path) -> None:
    for name in (".out.export-tmp-99999", ".out.export-cache-99999", ".out.export-old-99999"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial.npy").write_bytes(b"x")
    (tmp_path / ".other.export-tmp-1").mkdir()  # another export's folder is left alone
    export_tokens(token_dir, tmp_path / "out", "llamagen")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.export-tmp-1", "out"]


@pytest.mark.parametrize("target", EXPORT_TARGETS)
def test_variant_rows_export_with_n_aug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Rows of (n_aug, h, w) (LlamaGen-style flip variants) keep their variants in every layout."""
    from vqgan_lc.tokens import export as ex
    from vqgan_lc.tokens.format import TokenFile

    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 70_000, (3, 2, 4, 4)).astype("<u4"), rng.integers(0, 70_000, (2, 2, 4, 4)).astype("<u4")]
    manifest = {"grid": [4, 4], "tokenizer": {"codebook_size": 70_000}, "classes": ["a", "b"], "num_rows": 5}
    tf = TokenFile(directory=tmp_path, manifest=manifest, shards=shards, labels=np.array([0, 1, 1, 0, -1]),
                   paths=[f"p{i}.jpg" for i in range(5)])
    monkeypatch.setattr(ex, "open_tokens", lambda *a, **k: tf)
    out = export_tokens(tmp_path / "tok", tmp_path / "out", target, chunk_rows=2)
    back = read_export(out)
    np.testing.assert_array_equal(back.ids, np.concatenate(shards))
    np.testing.assert_array_equal(back.labels, [0, 1, 1, 0, -1])
    assert back.paths == [f"p{i}.jpg" for i in range(5)]
    if target == "llamagen":
        code = np.load(out / "codes" / "4.npy")
        assert code.shape == (1, 2, 16) and code.dtype == np.int64
        np.testing.assert_array_equal(code[0], shards[1][1].reshape(2, 16))
    if target == "memmap":
        assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"  # 70,000 codes > uint16


def test_sigkill_mid_export_keeps_the_old_out_and_a_rerun_completes(token_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    export_tokens(token_dir, out, "memmap")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    child = (
        "import os, signal\n"
        "from vqgan_lc.tokens import export as ex\n"
        "def killed(tokens, tmp, *a):\n"
        "    (tmp / 'tokens.bin').write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "ex._write_memmap = killed\n"
        f"ex.export_tokens({str(token_dir)!r}, {str(out)!r}, 'memmap', overwrite=True)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export, untouched
    assert any(p.name.startswith(".out.export-tmp-") for p in tmp_path.iterdir())  # the killed run's leftover
    export_tokens(token_dir, out, "memmap", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    np.testing.assert_array_equal(read_export(out).ids, expected(token_dir)[0])
