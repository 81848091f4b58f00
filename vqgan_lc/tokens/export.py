"""Export a token directory to the layouts other training code reads.

Targets (``ExportTarget``):

``llamagen``
    LlamaGen's ``extract_codes_c2i.py`` layout: ``codes/{i}.npy`` of shape ``(1, n_aug, h*w)`` int64
    (``n_aug`` = 1 for a plain directory, the stored variants otherwise) and ``labels/{i}.npy`` of shape
    ``(1,)`` int64. ``llamagen_prefix="imagenet256"`` names the folders ``imagenet256_codes`` /
    ``imagenet256_labels``, the names LlamaGen's ``build_imagenet_code`` looks for under ``--code-path``.
``memmap``
    one flat ``tokens.bin`` for nanoGPT-style loaders: every row's ``h*w`` ids in raster order, rows in
    token-directory order, as uint16 when every id (and the EOS id) fits, else uint32; optionally an EOS
    id (``codebook_size``) after each row. ``meta.json`` records shape, dtype, stride and EOS policy;
    ``labels.npy`` (int64) and ``paths.txt`` carry the labels and source paths.
``parquet``
    ``tokens.parquet`` with columns ``ids`` (fixed-size list of uint32, ``h*w`` per row), ``label``
    (int64) and ``path`` (string); the token manifest is the file's key-value metadata
    ``vqgan_lc.manifest`` (needs ``pyarrow``: ``pip install 'vqgan-lc[export]'``).
``hf``
    a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (columns ``ids``, ``label``,
    ``path``), the manifest as JSON in ``info.description`` (needs ``datasets``: the ``[export]`` extra).

Every export also writes ``vqgan-lc-export.json`` (format ``vqgan-lc-export``, target, grid, rows,
the token manifest) so ``read_export`` can read any of them back. The export is built in a temporary
folder next to ``out`` and renamed into place, so ``out`` is either absent, the old content, or complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .._io import OutputLock, atomic_write_json, fsync_dir, reserve_file_space
from ..errors import ExportError
from .format import TokenFile, open_tokens, read_paths_file

log = logging.getLogger("vqgan_lc.tokens.export")

ExportTarget = Literal["llamagen", "memmap", "parquet", "hf"]
EXPORT_TARGETS: tuple[str, ...] = get_args(ExportTarget)
EXPORT_FORMAT = "vqgan-lc-export"
EXPORT_FORMAT_VERSION = 1
EXPORT_RECORD = "vqgan-lc-export.json"
MANIFEST_KEY = "vqgan_lc.manifest"
UINT16_LIMIT = int(np.iinfo(np.uint16).max)

_EXTRA = {"parquet": ("pyarrow", "export"), "hf": ("datasets", "export")}


@dataclass(frozen=True)
class ExportedTokens:
    """What ``read_export`` returns: ids ``(n, h, w)`` (or ``(n, n_aug, h, w)``), labels, paths, record."""

    ids: np.ndarray
    labels: np.ndarray
    paths: list[str]
    record: dict[str, Any]


def memmap_dtype(codebook_size: int, *, eos: bool) -> np.dtype:
    """uint16 when every id (and the EOS id ``codebook_size``) fits, else uint32 (little-endian)."""
    largest = codebook_size if eos else codebook_size - 1
    return np.dtype("<u2") if largest <= UINT16_LIMIT else np.dtype("<u4")


def require(target: str) -> None:
    """Raise ``ExportError`` naming the package and extra when ``target`` needs a missing optional package."""
    if target not in _EXTRA:
        return
    module, extra = _EXTRA[target]
    try:
        __import__(module)
    except ImportError as e:
        raise ExportError(
            f"--to {target} needs the {module} package, which is not installed: pip install 'vqgan-lc[{extra}]'"
        ) from e


def _chunks(tokens: TokenFile, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(tokens), chunk_rows):
        yield start, np.asarray(tokens[start : min(start + chunk_rows, len(tokens))])


def _row_shape(tokens: TokenFile) -> tuple[int, ...]:
    if len(tokens):
        return tuple(int(s) for s in np.asarray(tokens.row(0)).shape)
    return tokens.grid


def _seq_len(row_shape: tuple[int, ...]) -> int:
    return int(np.prod(row_shape))


# ----------------------------------------------------------------------------------------- writers
def _write_llamagen(tokens: TokenFile, tmp: Path, chunk_rows: int, prefix: str | None) -> dict[str, Any]:
    codes_dir = tmp / (f"{prefix}_codes" if prefix else "codes")
    labels_dir = tmp / (f"{prefix}_labels" if prefix else "labels")
    codes_dir.mkdir()
    labels_dir.mkdir()
    h, w = tokens.grid
    if len(tokens) and int(np.min(tokens.labels)) < 0:
        log.warning("some rows have no class (label -1); LlamaGen's class-conditional training expects labels >= 0")
    for start, block in _chunks(tokens, chunk_rows):
        flat = block.reshape(len(block), -1, h * w).astype(np.int64)  # (rows, n_aug, h*w)
        for j, row in enumerate(flat):
            i = start + j
            np.save(codes_dir / f"{i}.npy", row[None], allow_pickle=False)
            np.save(labels_dir / f"{i}.npy", np.asarray([tokens.labels[i]], dtype=np.int64), allow_pickle=False)
    return {"codes_dir": codes_dir.name, "labels_dir": labels_dir.name, "code_dtype": "int64",
            "code_shape": [1, _seq_len(_row_shape(tokens)) // (h * w), h * w]}


def _write_memmap(tokens: TokenFile, tmp: Path, chunk_rows: int, eos: bool) -> dict[str, Any]:
    row_shape = _row_shape(tokens)
    length = _seq_len(row_shape)
    stride = length + (1 if eos else 0)
    dtype = memmap_dtype(tokens.codebook_size, eos=eos)
    n = len(tokens)
    out = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="w+", shape=(n * stride,)) if n else None
    if out is not None:
        reserve_file_space(tmp / "tokens.bin")  # a full disk: ENOSPC now, not SIGBUS while writing the map
    for start, block in _chunks(tokens, chunk_rows):
        rows = np.zeros((len(block), stride), dtype=dtype)
        rows[:, :length] = block.reshape(len(block), length)
        if eos:
            rows[:, length] = tokens.codebook_size
        assert out is not None
        out[start * stride : (start + len(block)) * stride] = rows.reshape(-1)
    if out is not None:
        out.flush()
        del out
    else:
        (tmp / "tokens.bin").write_bytes(b"")
    np.save(tmp / "labels.npy", np.asarray(tokens.labels, dtype=np.int64), allow_pickle=False)
    meta = {
        "file": "tokens.bin", "dtype": dtype.name, "byteorder": "little", "num_rows": n,
        "row_shape": list(row_shape), "row_length": length, "row_stride": stride,
        "shape": [n * stride],
        "eos": {"policy": "after-each-row" if eos else "none", "id": tokens.codebook_size if eos else None},
        "vocab_size": tokens.codebook_size + (1 if eos else 0),
        "labels_file": "labels.npy", "paths_file": "paths.txt",
        "classes": tokens.manifest.get("classes"),
    }
    atomic_write_json(tmp / "meta.json", meta)
    return {"meta": "meta.json"}


def _write_parquet(tokens: TokenFile, tmp: Path, chunk_rows: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    length = _seq_len(_row_shape(tokens))
    schema = pa.schema(
        [("ids", pa.list_(pa.uint32(), length)), ("label", pa.int64()), ("path", pa.string())],
        metadata={MANIFEST_KEY: json.dumps(tokens.manifest, sort_keys=True)},
    )
    with pq.ParquetWriter(tmp / "tokens.parquet", schema) as writer:
        for start, block in _chunks(tokens, chunk_rows):
            flat = pa.array(np.ascontiguousarray(block.reshape(-1)).astype(np.uint32))
            table = pa.table(
                {
                    "ids": pa.FixedSizeListArray.from_arrays(flat, length),
                    "label": pa.array(np.asarray(tokens.labels[start : start + len(block)], dtype=np.int64)),
                    "path": pa.array(tokens.paths[start : start + len(block)], type=pa.string()),
                },
                schema=schema,
            )
            writer.write_table(table)
    return {"file": "tokens.parquet", "metadata_key": MANIFEST_KEY}


def _write_hf(tokens: TokenFile, tmp: Path, chunk_rows: int) -> dict[str, Any]:
    import datasets

    length = _seq_len(_row_shape(tokens))
    features = datasets.Features(
        {"ids": datasets.List(datasets.Value("uint32"), length=length), "label": datasets.Value("int64"),
         "path": datasets.Value("string")}
    )
    info = datasets.DatasetInfo(description=json.dumps(tokens.manifest, sort_keys=True), features=features)

    def rows() -> Iterator[dict[str, Any]]:
        for start, block in _chunks(tokens, chunk_rows):
            flat = block.reshape(len(block), length)
            for j, ids in enumerate(flat):
                yield {"ids": ids.astype(np.uint32), "label": int(tokens.labels[start + j]),
                       "path": tokens.paths[start + j]}

    cache = tmp.parent / f"{tmp.name.replace('export-tmp', 'export-cache')}"
    try:
        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(cache), keep_in_memory=False)
        ds.info.description = info.description
        ds.save_to_disk(str(tmp / "dataset"))
        del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"dataset_dir": "dataset"}


# ----------------------------------------------------------------------------------------- public
def export_tokens(
    tokens_dir: str | os.PathLike,
    out: str | os.PathLike,
    to: ExportTarget,
    *,
    overwrite: bool = False,
    verify: bool = True,
    chunk_rows: int = 4096,
    eos: bool = False,
    llamagen_prefix: str | None = None,
) -> Path:
    """Export the token directory ``tokens_dir`` to ``out`` in the layout ``to`` (see the module docs).

    Refuses (``ExportError``) an unknown target, a missing optional package, a non-empty ``out`` without
    ``overwrite`` and an ``out`` that is a file. ``verify`` checks the shards' sha256 first. Returns ``out``.
    """
    if to not in EXPORT_TARGETS:
        raise ExportError(f"unknown export target {to!r}; choose one of {', '.join(EXPORT_TARGETS)}")
    if chunk_rows < 1:
        raise ExportError(f"chunk_rows must be >= 1, got {chunk_rows}")
    require(to)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; pass a folder path to --out")
    # Beside the folder, which an export replaces whole (removed when the export ends).
    with OutputLock(out, path=out.parent / f".{out.name}.vqgan-lc.lock"):
        return _export_tokens(tokens_dir, out, to, overwrite=overwrite, verify=verify, chunk_rows=chunk_rows, eos=eos,
                              llamagen_prefix=llamagen_prefix)


def _export_tokens(tokens_dir: str | os.PathLike, out: Path, to: ExportTarget, *, overwrite: bool, verify: bool,
                   chunk_rows: int, eos: bool, llamagen_prefix: str | None) -> Path:
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        if (out / EXPORT_RECORD).is_file():
            raise ExportError(f"{out} holds an earlier token export; pass --overwrite to replace it, or choose "
                              "another --out")
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ExportError(f"{out} is not empty and is not a token export (it holds {shown}); choose an empty or new "
                          "--out (--overwrite would replace the whole folder)")
    tokens = open_tokens(tokens_dir, verify=verify)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        if to == "llamagen":
            extra = _write_llamagen(tokens, tmp, chunk_rows, llamagen_prefix)
        elif to == "memmap":
            extra = _write_memmap(tokens, tmp, chunk_rows, eos)
        elif to == "parquet":
            extra = _write_parquet(tokens, tmp, chunk_rows)
        else:
            extra = _write_hf(tokens, tmp, chunk_rows)
        if to in ("llamagen", "memmap"):
            (tmp / "paths.txt").write_text("".join(p + "\n" for p in tokens.paths))
        record = {
            "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "target": to,
            "source": str(Path(tokens_dir).resolve()), "num_rows": len(tokens), "grid": list(tokens.grid),
            "row_shape": list(_row_shape(tokens)), "codebook_size": tokens.codebook_size,
            "layout": extra, "manifest": tokens.manifest,
        }
        atomic_write_json(tmp / EXPORT_RECORD, record)
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d rows of %s to %s (%s)", len(tokens), tokens_dir, out, to)
    return out


def _remove_orphans(out: Path) -> None:
    """Remove what a killed export to ``out`` left beside it (temporary, cache and set-aside folders)."""
    for p in out.parent.glob(f".{out.name}.export-*"):
        log.info("removing %s, left by an interrupted export", p)
        shutil.rmtree(p, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is renamed aside first, then removed."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.export-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_export(out: str | os.PathLike) -> ExportedTokens:
    """Read back any export written by ``export_tokens``: ids in token-directory order ``(n, *row_shape)``
    uint32, labels int64, paths. Raises ``ExportError`` for a folder that is not such an export."""
    out = Path(out)
    rec_path = out / EXPORT_RECORD
    if not rec_path.is_file():
        raise ExportError(f"{out} has no {EXPORT_RECORD}: not written by `vqgan-lc export-tokens`")
    record = json.loads(rec_path.read_text())
    if record.get("format") != EXPORT_FORMAT or record.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{rec_path} is not a version-{EXPORT_FORMAT_VERSION} {EXPORT_FORMAT} record; upgrade vqgan-lc")
    n = int(record["num_rows"])
    row_shape = tuple(int(s) for s in record["row_shape"])
    target = record["target"]
    layout = record["layout"]
    if target == "llamagen":
        codes = out / layout["codes_dir"]
        labs = out / layout["labels_dir"]
        ids = np.stack([np.load(codes / f"{i}.npy").reshape(row_shape) for i in range(n)]) if n else None
        labels = np.concatenate([np.load(labs / f"{i}.npy") for i in range(n)]) if n else np.empty(0, np.int64)
        paths = read_paths_file(out / "paths.txt")
    elif target == "memmap":
        meta = json.loads((out / layout["meta"]).read_text())
        flat = np.fromfile(out / meta["file"], dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
        rows = flat.reshape(n, meta["row_stride"])
        ids = rows[:, : meta["row_length"]].reshape((n, *row_shape))
        labels = np.load(out / meta["labels_file"])
        paths = read_paths_file(out / meta["paths_file"])
    elif target == "parquet":
        require("parquet")
        import pyarrow.parquet as pq

        table = pq.read_table(out / layout["file"])
        flat = table.column("ids").combine_chunks().flatten().to_numpy()
        ids = flat.reshape((n, *row_shape))
        labels = table.column("label").to_numpy()
        paths = table.column("path").to_pylist()
    elif target == "hf":
        require("hf")
        import datasets

        ds = datasets.load_from_disk(str(out / layout["dataset_dir"])).with_format("numpy")
        ids = np.asarray(ds["ids"]).reshape((n, *row_shape)) if n else None
        labels = np.asarray(ds["label"], dtype=np.int64)
        paths = [str(p) for p in ds["path"]]
    else:
        raise ExportError(f"{rec_path} names an unknown target {target!r}; upgrade vqgan-lc")
    if ids is None:
        ids = np.empty((0, *row_shape), np.uint32)
    return ExportedTokens(ids=np.asarray(ids).astype(np.uint32), labels=np.asarray(labels, dtype=np.int64),
                          paths=list(paths), record=record)


__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_RECORD",
    "EXPORT_TARGETS",
    "MANIFEST_KEY",
    "ExportTarget",
    "ExportedTokens",
    "export_tokens",
    "memmap_dtype",
    "read_export",
    "require",
]
