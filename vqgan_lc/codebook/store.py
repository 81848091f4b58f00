"""The feature store: a directory of sharded ``(n, h, w, d)`` float16/float32 ``.npy`` memmaps.

Layout::

    manifest.json          format + format_version, options (extractor description, pooling, dtype,
                           shard size), grid, dim, source count + hash, finished shards, skipped files
    sources.tsv            the ordered source list: ``relative/path<TAB>class name`` (written once)
    features-00000.npy     (rows, h, w, d) for the readable images of sources [start, stop)

A shard covers a fixed range of source indices; unreadable images inside the range are left out
and listed (index, path, reason) both in the shard's entry and in the top-level ``skipped`` list.
Each shard's entry also records its file's ``sha256`` and ``sources_digest`` (the sizes and mtimes of
its sources, ``vqgan_lc.sources.sources_digest``). Shards are written to a temporary name, flushed, fsynced
and renamed, and the manifest is rewritten atomically after each one, so a crash never leaves a
partial shard visible. A rerun with the same options verifies the finished shards (file present,
right shape, sha256) and extracts again those whose sources changed and the rest; with different
options it refuses unless asked to overwrite, and ``overwrite`` always extracts afresh. A folder that
holds other files is refused unless ``overwrite`` (which keeps them), and an advisory lock
(``.vqgan-lc.lock``) stops a second run on the same store. Entries written before the checksums existed
are kept after the shape check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._io import (
    OutputLock,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    prepare_output_dir,
    read_format_json,
    reserve_file_space,
    sha256_file,
)
from ..data import UNLABELLED
from ..errors import FeatureStoreError, FormatVersionError
from ..formats import Description
from ..sources import ImageSource, sources_digest

log = logging.getLogger(__name__)

STORE_FORMAT = "vqgan-lc-features"
STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES = "sources.tsv"

StoreDtype = Literal["float16", "float32"]
OWN_NAMES = (r"features-\d{5,}\.npy", r"sources\.tsv", r"manifest\.json",
             r"(?:features-\d{5,}\.npy|sources\.tsv|manifest\.json)\.tmp")
"""Regular expressions of the names a feature store holds (the last: temporaries of older vqgan-lc versions)."""
LEGACY_TMP = r"(?:features-\d{5,}\.npy|sources\.tsv|manifest\.json)\.tmp"


def options_hash(options: dict[str, Any]) -> str:
    """Short sha256 of the canonical JSON of a store's options."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` covers source indices ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"features-{self.index:05d}.npy"


class FeatureStore:
    """Read access to a feature store directory (and the bookkeeping its writer shares).

    ``manifest`` is the parsed ``manifest.json``; ``paths``/``source_labels`` the ordered sources;
    ``classes`` the sorted class names. Shards are opened as read-only memmaps.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], paths: list[str], source_labels: np.ndarray) -> None:
        self.root = root
        self.manifest = manifest
        self.paths = paths
        self.source_labels = source_labels

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | os.PathLike, *, require_complete: bool = True) -> FeatureStore:
        """Open ``root``; raise ``FeatureStoreError`` if it is not a (complete) store, ``FormatVersionError``
        if its format version is unknown."""
        root = Path(root)
        manifest = read_format_json(
            root / MANIFEST, STORE_FORMAT, STORE_FORMAT_VERSION, what="vqgan-lc feature store manifest",
            error=FeatureStoreError, upgrade="Upgrade vqgan-lc, or re-extract the features.",
            missing=f"{root} is not a feature store (no {MANIFEST}); create it with --features-only",
        )
        paths, labels = cls._read_sources(root, manifest)
        store = cls(root, manifest, paths, labels)
        if require_complete and not manifest.get("complete", False):
            done = len(manifest.get("shards", {}))
            raise FeatureStoreError(
                f"feature store {root} is incomplete ({done} of {store.num_shards} shards); rerun the same "
                "extraction command to resume it"
            )
        return store

    @staticmethod
    def _read_sources(root: Path, manifest: dict[str, Any]) -> tuple[list[str], np.ndarray]:
        spath = root / SOURCES
        if not spath.is_file():
            raise FeatureStoreError(f"{root} has no {SOURCES}; the store is corrupt, re-extract it")
        text = spath.read_text()
        if hashlib.sha256(text.encode()).hexdigest() != manifest.get("sources_sha256"):
            raise FeatureStoreError(f"{spath} does not match its manifest (edited or truncated); re-extract")
        classes = manifest.get("classes", [])
        index = {c: i for i, c in enumerate(classes)}
        paths, labels = [], []
        for line in text.removesuffix("\n").split("\n") if text else []:  # not splitlines: \r, U+2028 are no line ends
            p, _, c = line.partition("\t")
            paths.append(p)
            labels.append(index[c] if c else UNLABELLED)
        return paths, np.asarray(labels, dtype=np.int64)

    # ------------------------------------------------------------------ properties
    @property
    def options(self) -> dict[str, Any]:
        return self.manifest["options"]

    @property
    def extractor(self) -> dict[str, Any]:
        return self.options["extractor"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    @property
    def grid(self) -> tuple[int, int]:
        g = self.manifest.get("grid")
        if g is None:
            raise FeatureStoreError(f"feature store {self.root} holds no features yet")
        return int(g[0]), int(g[1])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def pool(self) -> int:
        return int(self.options["pool"])

    @property
    def num_sources(self) -> int:
        return int(self.manifest["num_sources"])

    @property
    def shard_size(self) -> int:
        return int(self.options["shard_size"])

    @property
    def num_shards(self) -> int:
        return -(-self.num_sources // self.shard_size)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("skipped", []))

    @property
    def source_hash(self) -> str:
        return str(self.manifest["source_hash"])

    def plan(self) -> list[ShardPlan]:
        n, s = self.num_sources, self.shard_size
        return [ShardPlan(i, i * s, min(n, (i + 1) * s)) for i in range(self.num_shards)]

    def shard_entry(self, index: int) -> dict[str, Any] | None:
        return self.manifest.get("shards", {}).get(str(index))

    @property
    def num_images(self) -> int:
        """Rows stored (readable images)."""
        return sum(int(e["rows"]) for e in self.manifest.get("shards", {}).values())

    @property
    def num_vectors(self) -> int:
        h, w = self.grid
        return self.num_images * h * w

    # ------------------------------------------------------------------ reading
    def shard_rows(self, index: int) -> np.ndarray:
        """Source indices of the rows of shard ``index`` (its range minus the skipped files), int64."""
        plan = self.plan()[index]
        entry = self.shard_entry(index)
        skipped = {int(s["index"]) for s in entry["skipped"]} if entry else set()
        return np.asarray([i for i in range(plan.start, plan.stop) if i not in skipped], dtype=np.int64)

    def shard_labels(self, index: int) -> np.ndarray:
        """Class index of each row of shard ``index`` (``-1`` = no class), int64."""
        return self.source_labels[self.shard_rows(index)]

    def load_shard(self, index: int) -> np.ndarray:
        """Read-only memmap ``(rows, h, w, d)`` of shard ``index``."""
        entry = self.shard_entry(index)
        if entry is None:
            raise FeatureStoreError(f"shard {index} of {self.root} was not extracted yet; rerun the extraction")
        try:
            arr = np.load(self.root / entry["file"], mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # a truncated file: "mmap length is greater than file size"
            raise FeatureStoreError(
                f"{self.root / entry['file']} is missing, truncated or not a feature shard ({e}); rerun the same "
                "build-codebook command to extract it again, or pass --overwrite to rebuild the store"
            ) from e
        h, w = self.grid
        if arr.shape != (int(entry["rows"]), h, w, self.dim):
            raise FeatureStoreError(
                f"{self.root / entry['file']} has shape {arr.shape}, expected {(entry['rows'], h, w, self.dim)}; "
                "the store is corrupt: rerun the extraction with --overwrite"
            )
        return arr

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(features (rows, h, w, d) memmap, labels (rows,))`` per shard, in order."""
        for p in self.plan():
            yield self.load_shard(p.index), self.shard_labels(p.index)

    def row_labels(self) -> np.ndarray:
        """Class index of every stored row, in store order, int64 ``(num_images,)``."""
        parts = [self.shard_labels(p.index) for p in self.plan()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def gather_vectors(self, vector_ids: np.ndarray) -> np.ndarray:
        """Vectors by flat id (``row * h * w + position``), ids sorted ascending -> ``(len, d)`` float32."""
        h, w = self.grid
        hw = h * w
        out = np.empty((len(vector_ids), self.dim), dtype=np.float32)
        rows = vector_ids // hw
        offset = 0
        pos = 0
        for p in self.plan():
            arr = self.load_shard(p.index)
            n = arr.shape[0]
            lo, hi = np.searchsorted(rows, [offset, offset + n])
            if hi > lo:
                r = rows[lo:hi] - offset
                flat = arr.reshape(n, hw, self.dim)
                out[pos : pos + hi - lo] = flat[r, vector_ids[lo:hi] % hw]
                pos += hi - lo
            offset += n
        return out

    def class_vectors(self, label: int) -> np.ndarray:
        """All vectors of images of class ``label`` -> ``(n_images * h * w, d)`` float32, in store order."""
        parts = []
        for p in self.plan():
            entry = self.shard_entry(p.index)
            if entry is None or label not in entry.get("labels", []):
                continue
            rows = np.nonzero(self.shard_labels(p.index) == label)[0]
            if len(rows):
                arr = self.load_shard(p.index)
                parts.append(np.asarray(arr[rows], dtype=np.float32).reshape(-1, self.dim))
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts)

    def class_counts(self) -> np.ndarray:
        """Stored images per class, int64 ``(len(classes),)``."""
        labels = self.row_labels()
        return np.bincount(labels[labels >= 0], minlength=len(self.classes)).astype(np.int64)


class FeatureStoreWriter(FeatureStore):
    """Creates or resumes a store for one source list and one set of options."""

    @classmethod
    def create_or_resume(
        cls,
        root: str | os.PathLike,
        images: ImageSource,
        options: dict[str, Any],
        *,
        overwrite: bool = False,
    ) -> FeatureStoreWriter:
        """Open ``root`` for writing.

        ``options`` must hold ``extractor`` (the extractor's ``describe()``), ``pool``, ``dtype`` and
        ``shard_size``. An existing store made with the same options and sources is resumed; one made
        otherwise raises ``FeatureStoreError`` unless ``overwrite`` (then its files are removed).
        """
        root = Path(root)
        sources_text = "".join(
            f"{p}\t{images.classes[lab] if lab >= 0 else ''}\n" for p, lab in zip(images.paths, images.labels)
        )
        for p in images.paths:
            if "\t" in p or "\n" in p:
                raise FeatureStoreError(f"image path {p!r} contains a tab or newline; rename it")
        manifest = {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "options": options,
            "options_hash": options_hash(options),
            "num_sources": len(images),
            "source_hash": images.source_hash(),
            "sources_sha256": hashlib.sha256(sources_text.encode()).hexdigest(),
            "classes": list(images.classes),
            "grid": None,
            "dim": None,
            "shards": {},
            "skipped": [],
            "complete": False,
        }
        lock = OutputLock(root, option="--features-dir")
        prepare_output_dir(root, "feature store", overwrite=overwrite, own_names=OWN_NAMES, resumable=True,
                           lock=lock, option="--features-dir")
        try:
            return cls._create_or_resume(root, images, manifest, sources_text, overwrite, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create_or_resume(cls, root: Path, images: ImageSource, manifest: dict[str, Any], sources_text: str,
                          overwrite: bool, lock: OutputLock) -> FeatureStoreWriter:
        mpath = root / MANIFEST
        stray = sorted(f.name for f in root.iterdir() if re.fullmatch("|".join(OWN_NAMES[:2]), f.name))
        if not mpath.exists() and stray and not overwrite:
            raise FeatureStoreError(f"{root} holds feature-store files without a manifest ({', '.join(stray[:3])}); "
                                    "choose another --features-dir or pass --overwrite to replace them")
        if mpath.exists():
            try:
                old = FeatureStore.open(root, require_complete=False)
                mismatch = _differences(old.manifest, manifest)
            except (FeatureStoreError, FormatVersionError) as e:
                old, mismatch = None, [str(e)]
            if mismatch and not overwrite:
                raise FeatureStoreError(
                    f"the feature store at {root} was made with other options or images ({'; '.join(mismatch)}); "
                    "pass --overwrite to rebuild it, or choose another directory"
                )
            if mismatch:
                log.warning("overwriting the feature store at %s (%s)", root, "; ".join(mismatch))
                cls._remove_files(root)
            elif old is not None:
                manifest["grid"], manifest["dim"] = old.manifest["grid"], old.manifest["dim"]
                manifest["shards"] = old.manifest["shards"]
                manifest["skipped"] = old.manifest["skipped"]
        for tmp in root.iterdir():  # an older vqgan-lc's leftovers of an interrupted write (ours were swept)
            if re.fullmatch(LEGACY_TMP, tmp.name):
                tmp.unlink()
        if not (root / SOURCES).is_file() or not manifest["shards"]:
            atomic_write_text(root / SOURCES, sources_text)
        store = cls(root, manifest, list(images.paths), np.asarray(images.labels, dtype=np.int64))
        store.images = images
        store.lock = lock
        store._verify_finished()
        store.save_manifest()
        return store

    images: ImageSource
    lock: OutputLock
    """Held while this writer runs (``release`` when done; ``extract_features`` does)."""

    def release(self) -> None:
        """Drop the store's advisory lock (another run may then write to it)."""
        self.lock.release()

    @staticmethod
    def _remove_files(root: Path) -> None:
        for f in root.iterdir():
            if re.fullmatch("|".join(OWN_NAMES), f.name):
                f.unlink()

    def _verify_finished(self) -> None:
        """Drop finished-shard entries whose file is missing or of the wrong shape (they are redone)."""
        shards: dict[str, Any] = self.manifest["shards"]
        for key in sorted(shards, key=int):
            entry = shards[key]
            try:
                self.load_shard(int(key))
                if "sha256" in entry and sha256_file(self.root / entry["file"]) != entry["sha256"]:
                    raise FeatureStoreError(f"{entry['file']} is corrupt (its sha256 differs from the manifest)")
            except (FeatureStoreError, OSError, ValueError) as e:
                log.warning("shard %s of %s is missing or damaged (%s); it will be extracted again", key, self.root, e)
                del shards[key]
                continue
            if "sources_digest" in entry and entry["sources_digest"] != sources_digest(self.images,
                    int(entry["start"]), int(entry["stop"])):
                log.info("shard %s of %s: its source images changed; it will be extracted again", key, self.root)
                del shards[key]
                continue
            log.debug("shard %s (%d rows) verified", key, entry["rows"])
        self._rebuild_skipped()
        self.manifest["complete"] = len(shards) == self.num_shards

    def _rebuild_skipped(self) -> None:
        skipped = [s for k in sorted(self.manifest["shards"], key=int) for s in self.manifest["shards"][k]["skipped"]]
        self.manifest["skipped"] = skipped

    def is_done(self, index: int) -> bool:
        return str(index) in self.manifest["shards"]

    def pending(self) -> list[ShardPlan]:
        """Shards still to extract."""
        return [p for p in self.plan() if not self.is_done(p.index)]

    def set_geometry(self, grid: tuple[int, int], dim: int) -> None:
        """Record the ``(h, w)`` grid and feature dim (known before the first shard); must match a resumed store."""
        g = [int(grid[0]), int(grid[1])]
        if self.manifest["grid"] is None:
            self.manifest["grid"], self.manifest["dim"] = g, int(dim)
            self.save_manifest()
        elif self.manifest["grid"] != g or self.manifest["dim"] != int(dim):
            raise FeatureStoreError(
                f"the extractor gives a {g} x {dim} grid but the store at {self.root} holds "
                f"{self.manifest['grid']} x {self.manifest['dim']}; pass --overwrite to rebuild it"
            )

    def write_shard(self, plan: ShardPlan, features: np.ndarray, rows: Sequence[int],
                    skipped: Sequence[tuple[int, str]]) -> None:
        """Write shard ``plan`` atomically: ``features`` (len(rows), h, w, d) for source indices ``rows``."""
        dtype = np.dtype(self.options["dtype"])
        if features.ndim != 4 or features.shape[0] != len(rows):
            raise ValueError(f"shard features {features.shape} do not match {len(rows)} rows")
        grid, dim = [int(features.shape[1]), int(features.shape[2])], int(features.shape[3])
        if self.manifest["grid"] is None:
            self.manifest["grid"], self.manifest["dim"] = grid, dim
        elif self.manifest["grid"] != grid or self.manifest["dim"] != dim:
            raise FeatureStoreError(
                f"shard {plan.index} has a {grid} x {dim} grid but the store holds {self.manifest['grid']} x "
                f"{self.manifest['dim']}; images must give equal feature grids"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            out = features.astype(dtype, copy=False)
        if not np.isfinite(out).all():
            raise FeatureStoreError(
                f"features of shard {plan.index} overflow {dtype.name} (or are NaN); use --dtype float32"
            )
        with atomic_path(self.root / plan.file) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=out.shape)
            reserve_file_space(tmp)  # a full disk is ENOSPC here, not a SIGBUS while writing the map
            mm[...] = out
            mm.flush()
            del mm
            digest = sha256_file(tmp)
        labels = sorted({int(v) for v in self.source_labels[np.asarray(rows, dtype=np.int64)]} - {UNLABELLED})
        self.manifest["shards"][str(plan.index)] = {
            "file": plan.file,
            "start": plan.start,
            "stop": plan.stop,
            "rows": len(rows),
            "labels": labels,
            "skipped": [{"index": int(i), "path": self.paths[i], "reason": r} for i, r in sorted(skipped)],
            "sha256": digest,
            "sources_digest": sources_digest(self.images, plan.start, plan.stop),
        }
        self._rebuild_skipped()
        self.manifest["complete"] = len(self.manifest["shards"]) == self.num_shards
        self.save_manifest()

    def save_manifest(self) -> None:
        m = dict(self.manifest)
        m["shards"] = {k: self.manifest["shards"][k] for k in sorted(self.manifest["shards"], key=int)}
        atomic_write_json(self.root / MANIFEST, m, indent=1)


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a feature store (complete or not): extractor, counts, grid, dim, bytes, shards."""
    s = FeatureStore.open(path, require_complete=False)
    ext = s.extractor
    grid = s.manifest.get("grid")
    dim = s.manifest.get("dim")
    done = len(s.manifest.get("shards", {}))
    vectors = s.num_vectors if grid is not None else 0
    fields = {
        "extractor": ext.get("extractor"),
        "model": ext.get("model"),
        "layer": ext.get("layer"),
        "pool": s.pool,
        "dtype": s.options.get("dtype"),
        "sources": s.num_sources,
        "images": s.num_images,
        "skipped": len(s.skipped),
        "classes": len(s.classes),
        "grid": grid,
        "dim": dim,
        "features": vectors,
        "bytes": vectors * int(dim or 0) * np.dtype(s.options.get("dtype", "float32")).itemsize,
        "shards": f"{done} of {s.num_shards}",
        "complete": bool(s.manifest.get("complete", False)),
    }
    return Description("feature store", STORE_FORMAT, STORE_FORMAT_VERSION, fields,
                       {"options": s.options, "source_hash": s.source_hash})


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("source_hash") != new["source_hash"]:
        out.append(f"image list differs ({old.get('num_sources')} vs {new['num_sources']} images)")
    a, b = old.get("options", {}), new["options"]
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                sub = [k for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
                out.append(f"{key}: {', '.join(sub)} differ")
            else:
                out.append(f"{key}: {a.get(key)!r} vs {b.get(key)!r}")
    return out
