"""Token directories: what a dataset becomes after ``vqgan-lc encode``: the writer's pieces
(``write_shard``, ``shard_done``, ``write_manifest``), the reader (``open_tokens``,
``TokenDataset``), the manifest and ``check_compatible``. The pipeline that feeds the writer is
``tokens/encode.py``.

Layout (format version 1)::

    TOKENS/
      encode.json          the run's identity, written first: a rerun must match it
      manifest.json        format, version, tokenizer, grid, dtype, counts, shards, options, skipped
      shard-00000.npy      (n, h, w) uint32 ids of the images of source range [start, stop)
      shard-00000.json     that shard's record: source range, kept source indices, skipped files, sha256,
                           sources_digest (the sources' sizes and mtimes: a rerun redoes the shard when they change)
      labels.npy           (N,) int64 class index per row (-1 without a class)
      paths.txt            the source path of each row, in row order

Rows are the readable images in sorted source order. uint32 holds every id of a 100k codebook
(uint16 stops at 65,535). Every file is written to a temporary name, fsynced and renamed, so a
crash never leaves a partial file visible, and nothing in it depends on timing, so reruns are
byte-identical.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    read_format_json,
    sha256_file,
)
from ..errors import TokenFormatError
from ..formats import Description
from ..sources import sources_digest

if TYPE_CHECKING:
    from ..sources import ImageSource
    from ..tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENS_FORMAT = "vqgan-lc-tokens"
TOKENS_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RUN_FILE = "encode.json"  # the run's identity, written first: a rerun must match it
LABELS_FILE = "labels.npy"
PATHS_FILE = "paths.txt"
TOKEN_DTYPE = np.dtype("<u4")
WORKER_MODEL_DIR = ".model-for-workers"  # encode's copy of the model for its worker processes (removed after)
OWN_NAMES = (r"shard-\d{5,}\.(?:npy|json)", r"latents-\d{5,}\.npy", r"encode\.json", r"manifest\.json",
             r"labels\.npy", r"paths\.txt", r"\.model-for-workers")
"""Regular expressions of every name this format writes in a token directory (``prepare_output_dir``)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def shard_record_name(index: int) -> str:
    return f"shard-{index:05d}.json"


# ----------------------------------------------------------------------------------------- writing
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Source ranges ``[start, stop)`` of the shards of ``n`` sources."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_done(out: Path, index: int, start: int, stop: int, sources: ImageSource | None = None) -> bool:
    """Whether shard ``index`` of ``[start, stop)`` is finished: its ``.npy`` and record exist, the sha256
    matches and, when ``sources`` is given, its sources are unchanged since it was written (``sources_digest``,
    computed only for a shard that has a record; a record without one, from an older vqgan-lc, is redone)."""
    rec_path = out / shard_record_name(index)
    npy = out / shard_name(index)
    if not rec_path.is_file() or not npy.is_file():
        return False
    try:
        rec = json.loads(rec_path.read_text())
    except ValueError:
        return False
    if rec.get("source_range") != [start, stop]:
        return False
    if sources is not None and rec.get("sources_digest") != sources_digest(sources, start, stop):
        log.info("shard %d: its sources changed since it was written; encoding it again", index)
        return False
    if sha256_file(npy) != rec.get("sha256"):
        return False
    lat = rec.get("latents")  # written with --latents: that file must be whole too
    return lat is None or ((out / str(lat.get("file", ""))).is_file() and sha256_file(out / lat["file"]) == lat.get("sha256"))


def write_shard(out: Path, images: ImageSource, index: int, start: int, stop: int,
                by_source: dict[int, np.ndarray], failed: dict[int, str], grid: tuple[int, ...],
                extra: dict[str, Any] | None = None) -> None:
    """Write shard ``index`` (sources ``[start, stop)``) and its record; the rows and failures are popped
    from ``by_source`` / ``failed``. ``grid``: a row's shape, ``(h, w)`` or ``(A, h, w)`` with augmented
    variants; ``extra``: more record fields (the latents file's record), written with the record."""
    kept = [i for i in range(start, stop) if i in by_source]
    arr = np.stack([by_source.pop(i) for i in kept]) if kept else np.empty((0, *grid), TOKEN_DTYPE)
    digest = atomic_write_npy(out / shard_name(index), np.ascontiguousarray(arr, dtype=TOKEN_DTYPE))
    record = {
        "file": shard_name(index),
        "source_range": [start, stop],
        "rows": len(kept),
        "kept": kept,
        "skipped": [{"index": i, "path": images.paths[i], "reason": failed.pop(i)} for i in range(start, stop) if i in failed],
        "sha256": digest,
        "sources_digest": sources_digest(images, start, stop),
        **(extra or {}),
    }
    atomic_write_json(out / shard_record_name(index), record)
    log.debug("wrote shard %d (%d rows)", index, len(kept))


def write_manifest(out: Path, images: ImageSource, descriptor: dict[str, Any]) -> dict[str, Any]:
    """Write ``labels.npy``, ``paths.txt`` and, last, ``manifest.json`` from the finished shards' records."""
    shards: list[dict[str, Any]] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[Any] = []
    latents: list[dict[str, Any]] = []
    row = 0
    for index in range(len(shard_ranges(len(images), descriptor["shard_size"]))):
        rec = json.loads((out / shard_record_name(index)).read_text())
        shards.append({"file": rec["file"], "source_range": rec["source_range"], "rows": rec["rows"],
                       "row_range": [row, row + rec["rows"]], "sha256": rec["sha256"]})
        row += rec["rows"]
        labels.extend(images.labels[i] for i in rec["kept"])
        paths.extend(images.paths[i] for i in rec["kept"])
        skipped.extend(rec["skipped"])
        if "latents" in rec:
            latents.append(rec["latents"])
    atomic_write_npy(out / LABELS_FILE, np.asarray(labels, dtype=np.int64))
    atomic_write_bytes(out / PATHS_FILE, "".join(p + "\n" for p in paths).encode())
    manifest = {
        **descriptor,
        "num_rows": row,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "shards": shards,
        "labels_file": LABELS_FILE,
        "paths_file": PATHS_FILE,
    }
    if descriptor.get("latents"):
        from .latents import latent_summary

        manifest["latents"] = latent_summary(latents, descriptor["latents"]["dtype"], descriptor["latents"]["row_shape"])
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------- reading


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a token directory, after checking format, version, the types of the fields a reader
    uses, and that the labels and paths files it names exist (each problem: one ``TokenFormatError``)."""
    manifest = read_format_json(
        Path(directory) / MANIFEST, TOKENS_FORMAT, TOKENS_FORMAT_VERSION,
        what="vqgan-lc token manifest", error=TokenFormatError,
        missing=f"{directory} has no {MANIFEST}: not a token directory, or an encode run that has not finished "
        "(rerun the same `vqgan-lc encode` command to complete it)",
    )
    _check_manifest_fields(manifest, Path(directory))
    return manifest


_REBUILD = "rerun the `vqgan-lc encode` command that made the directory to rebuild it"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_manifest_fields(m: dict[str, Any], directory: Path) -> None:
    """Raise ``TokenFormatError`` naming the first manifest field that is missing or of the wrong type."""
    where = directory / MANIFEST

    def bad(field: str, expected: str) -> TokenFormatError:
        if field not in m and "." not in field and "[" not in field:
            return TokenFormatError(f"{where} lacks the field {field!r} ({expected}); {_REBUILD}")
        return TokenFormatError(f"{where}: field {field!r} has the wrong type (expected {expected}); {_REBUILD}")

    grid = m.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(_is_int(v) and v > 0 for v in grid)):
        raise bad("grid", "a list of two positive integers")
    if not (_is_int(m.get("num_rows")) and m["num_rows"] >= 0):
        raise bad("num_rows", "an integer >= 0")
    for field in ("labels_file", "paths_file"):
        if not (isinstance(m.get(field), str) and m[field]):
            raise bad(field, "a file name")
    tok = m.get("tokenizer")
    if not isinstance(tok, dict):
        raise bad("tokenizer", "an object with codebook_size and config_hash")
    if not (_is_int(tok.get("codebook_size")) and tok["codebook_size"] > 0):
        raise bad("tokenizer.codebook_size", "a positive integer")
    classes = m.get("classes", [])
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a list of class names")
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise bad("shards", "a list of shard records")
    for i, rec in enumerate(shards):
        if not isinstance(rec, dict):
            raise bad(f"shards[{i}]", "an object with file, rows and sha256")
        if not (isinstance(rec.get("file"), str) and rec["file"]):
            raise bad(f"shards[{i}].file", "a file name")
        if not (_is_int(rec.get("rows")) and rec["rows"] >= 0):
            raise bad(f"shards[{i}].rows", "an integer >= 0")
        if not isinstance(rec.get("sha256"), str):
            raise bad(f"shards[{i}].sha256", "a hex string")
    for field in ("labels_file", "paths_file"):
        if not (directory / m[field]).is_file():
            raise TokenFormatError(f"{directory} has no {m[field]} (its manifest names it); {_REBUILD}")


@dataclass
class ShardedRows:
    """Rows spread over memmapped shards (a token directory's ids, its latents): ``row(i)`` finds the shard."""

    directory: Path
    manifest: dict[str, Any]
    shards: list[np.ndarray]

    def __post_init__(self) -> None:
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def row(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i %= n
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self.shards[s][i - self._offsets[s]]


@dataclass
class TokenFile(ShardedRows):
    """A read-only view of a token directory.

    ``ids[i]`` is the ``(h, w)`` uint32 id map of row ``i``; ``ids[a:b]`` stacks rows. Shards are
    numpy memmaps, so opening a 1M-image directory reads no ids.
    """

    labels: np.ndarray
    paths: list[str]

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.manifest["grid"]
        return int(h), int(w)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """A row's shape: ``(h, w)``, or ``(A, h, w)`` when the directory holds ``A`` augmented variants."""
        return row_shape(self.manifest)

    @property
    def codebook_size(self) -> int:
        return int(self.manifest["tokenizer"]["codebook_size"])

    def __getitem__(self, index: int | slice | Sequence[int]) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.row(int(index))
        rows = range(len(self))[index] if isinstance(index, slice) else index
        return np.stack([self.row(int(i)) for i in rows]) if len(rows) else np.empty((0, *self.row_shape), TOKEN_DTYPE)


def read_paths_file(path: Path) -> list[str]:
    """The lines of a ``paths.txt``: UTF-8, split on ``\\n`` only (``splitlines`` would also split a name at
    ``\\r``, form feed or U+2028), the final newline dropped."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenFormatError(f"{path} is not UTF-8 text ({e.reason}); rerun `vqgan-lc encode` to rebuild it") from None
    if not text:
        return []
    return text.removesuffix("\n").split("\n")


def _check_shard_records(directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's shard records after checking that they tile the rows and sources in order, that every
    ``file`` stays inside ``directory`` and that the rows add up to ``num_rows``; one sentence per problem."""
    fix = f"the manifest of {directory} was edited or damaged; rerun `vqgan-lc encode` into it to rebuild it"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise TokenFormatError(f"{directory / MANIFEST} has no list of shards; {fix}")
    root = directory.resolve()
    row = source = 0
    for k, rec in enumerate(shards):
        if not isinstance(rec, dict) or not all(key in rec for key in ("file", "rows", "row_range", "sha256")):
            raise TokenFormatError(f"shard entry {k} of {directory / MANIFEST} lacks file, rows, row_range or sha256; {fix}")
        name, rows = rec["file"], rec["rows"]
        if not isinstance(name, str) or not isinstance(rows, int) or rows < 0:
            raise TokenFormatError(f"shard entry {k} of {directory / MANIFEST} has file {name!r} and rows {rows!r}; {fix}")
        target = (directory / name).resolve()
        if Path(name).is_absolute() or target.parent != root:
            raise TokenFormatError(f"shard entry {k} names {name!r}, which is not a file in {directory}; {fix}")
        if rec["row_range"] != [row, row + rows]:
            raise TokenFormatError(f"shard entry {k} ({name}) has row_range {rec['row_range']}, expected {[row, row + rows]} "
                                   f"(shards out of order or missing); {fix}")
        src = rec.get("source_range")
        if src is not None:
            if not (isinstance(src, list) and len(src) == 2 and src[0] == source and isinstance(src[1], int)
                    and src[1] - src[0] >= rows):
                raise TokenFormatError(f"shard entry {k} ({name}) has source_range {src}, expected it to start at "
                                       f"{source} and hold its {rows} rows (shards out of order or missing); {fix}")
            source = src[1]
        row += rows
    if row != manifest.get("num_rows"):
        raise TokenFormatError(f"the shards of {directory} hold {row} rows but the manifest says num_rows "
                               f"{manifest.get('num_rows')!r} (a shard entry deleted?); {fix}")
    n_src = manifest.get("num_sources")
    if shards and isinstance(shards[-1].get("source_range"), list) and isinstance(n_src, int) and source != n_src:
        raise TokenFormatError(f"the shards of {directory} cover {source} of its {n_src} sources (a shard entry "
                               f"deleted?); {fix}")
    return shards


def open_tokens(directory: str | os.PathLike, *, verify: bool = True) -> TokenFile:
    """Open a token directory written by ``vqgan-lc encode``.

    ``verify=True`` checks every shard's sha256 against the manifest (about 1 s per GB); a missing
    or corrupt shard raises ``TokenFormatError`` naming it. Always checked, from the manifest alone:
    the shards tile the rows and sources in order and add up to ``num_rows``, every shard file lies in
    the directory, ``labels.npy``/``paths.txt`` have one entry per row and the labels index ``classes``.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    shape = row_shape(manifest)
    shards = []
    for rec in _check_shard_records(directory, manifest):
        path = directory / rec["file"]
        if not path.is_file():
            raise TokenFormatError(f"shard {path} is missing; rerun `vqgan-lc encode` into {directory} to rebuild it")
        if verify and sha256_file(path) != rec["sha256"]:
            raise TokenFormatError(
                f"shard {path} is corrupt (sha256 differs from the manifest); rerun `vqgan-lc encode` to rebuild it"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise TokenFormatError(f"shard {path} cannot be read ({e})") from e
        if arr.dtype != TOKEN_DTYPE or arr.shape != (rec["rows"], *shape):
            raise TokenFormatError(f"shard {path} has shape {arr.shape} {arr.dtype}, manifest says "
                                   f"{(rec['rows'], *shape)} uint32")
        shards.append(arr)
    n = manifest["num_rows"]
    labels = np.load(directory / manifest["labels_file"], allow_pickle=False)
    paths = read_paths_file(directory / manifest["paths_file"])
    if len(labels) != n or len(paths) != n:
        raise TokenFormatError(
            f"{directory}: {manifest['labels_file']} has {len(labels)} rows and {manifest['paths_file']} {len(paths)} "
            f"lines for the manifest's {n} rows (a file name with a line break, or an edited file); rerun "
            "`vqgan-lc encode` into a new directory (names with line breaks are refused: rename them)"
        )
    classes = manifest.get("classes") or []
    if n and (labels.dtype.kind not in "iu" or int(labels.min()) < -1 or int(labels.max()) >= len(classes)):
        bad = labels.max() if labels.dtype.kind in "iu" and int(labels.max()) >= len(classes) else labels.min()
        raise TokenFormatError(
            f"{directory / manifest['labels_file']} holds label {bad} but the manifest lists {len(classes)} classes "
            "(labels must be -1 or an index into classes); rerun `vqgan-lc encode` to rebuild it"
        )
    return TokenFile(directory=directory, manifest=manifest, shards=shards, labels=labels, paths=paths)


def row_shape(manifest: dict[str, Any]) -> tuple[int, ...]:
    """``(h, w)``, or ``(A, h, w)`` for a directory written with ``--augment`` (``A`` variants per image)."""
    h, w = (int(v) for v in manifest["grid"])
    aug = manifest.get("augment")
    return (len(aug["variants"]), h, w) if aug else (h, w)


class TokenDataset(torch.utils.data.Dataset):
    """Rows of a token directory as ``(ids (h, w) int64, label int)`` for training a prior.

    A directory written with ``--augment`` holds ``A`` variants per image: ``variant="random"`` (the
    default) gives one per item, drawn from ``(seed, epoch, i)`` so each epoch (``set_epoch``) sees a
    new, reproducible choice (LlamaGen draws one per sample); an int takes that variant always;
    ``"all"`` gives the ``(A, h, w)`` stack. Without variants the option is ignored.
    """

    def __init__(self, directory: str | os.PathLike, *, verify: bool = True,
                 variant: int | Literal["random", "all"] = "random", seed: int = 0) -> None:
        self.tokens = open_tokens(directory, verify=verify)
        self.variants = len(self.tokens.row_shape) == 3
        n_aug = self.tokens.row_shape[0] if self.variants else 1
        if isinstance(variant, int) and not 0 <= variant < n_aug:
            raise TokenFormatError(f"variant {variant} out of range: {directory} holds {n_aug} per image")
        if not isinstance(variant, int) and variant not in ("random", "all"):
            raise TokenFormatError(f"variant must be an index, 'random' or 'all', got {variant!r}")
        self.variant = variant
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose variants ``variant="random"`` draws (call it before each epoch)."""
        self.epoch = int(epoch)

    def variant_of(self, i: int) -> int | None:
        """The variant item ``i`` yields this epoch (``None``: all of them, or a directory without variants)."""
        if not self.variants or self.variant == "all":
            return None
        if isinstance(self.variant, int):
            return self.variant
        n_aug = self.tokens.row_shape[0]
        return int(np.random.default_rng([self.seed, self.epoch, i % len(self)]).integers(n_aug))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.tokens.row(i)
        v = self.variant_of(i)
        ids = torch.from_numpy((row if v is None else row[v]).astype(np.int64))
        return ids, int(self.tokens.labels[i])


def check_compatible(manifest: dict[str, Any], tokenizer: Tokenizer) -> list[str]:
    """Reasons why ``tokenizer`` should not decode these tokens (empty when it fits): another codebook size,
    architecture (``config_hash``) or weights (``weights_hash``; a manifest written before vqgan-lc recorded
    it is checked on the architecture only, with a warning)."""
    from ..tokenizer import identity_mismatch

    problems = []
    tok = manifest["tokenizer"]
    if tok.get("codebook_size") != tokenizer.codebook_size:
        problems.append(f"codebook size {tokenizer.codebook_size} != {tok.get('codebook_size')} in the manifest")
    problems.extend(identity_mismatch(tok, tokenizer))
    return problems


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a token directory: tokenizer, grid, rows, shards (read from the manifest)."""
    m = read_manifest(path)
    tok = m.get("tokenizer") or {}
    fields = {
        "tokenizer": tok.get("kind"),
        "codebook_size": tok.get("codebook_size"),
        "config_hash": tok.get("config_hash"),
        "grid": m.get("grid"),
        "dtype": m.get("dtype"),
        "rows": m.get("num_rows"),
        "skipped": m.get("num_skipped"),
        "shards": len(m.get("shards", [])),
        "classes": len(m.get("classes") or []),
        "image_size": (m.get("preprocessing") or {}).get("image_size"),
    }
    details: dict[str, Any] = {k: m[k] for k in ("tokenizer", "grid", "dtype", "num_rows", "num_skipped", "preprocessing") if k in m}
    return Description("token directory", TOKENS_FORMAT, TOKENS_FORMAT_VERSION, fields, details)


__all__ = [
    "LABELS_FILE",
    "MANIFEST",
    "OWN_NAMES",
    "PATHS_FILE",
    "RUN_FILE",
    "TOKENS_FORMAT",
    "TOKENS_FORMAT_VERSION",
    "TOKEN_DTYPE",
    "WORKER_MODEL_DIR",
    "TokenDataset",
    "TokenFile",
    "TokenFormatError",
    "check_compatible",
    "describe",
    "open_tokens",
    "read_manifest",
    "read_paths_file",
    "row_shape",
    "shard_done",
    "shard_name",
    "shard_ranges",
    "shard_record_name",
    "write_manifest",
    "write_shard",
]
