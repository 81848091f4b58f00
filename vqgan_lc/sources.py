"""Image sources behind one interface: an image folder or file list, WebDataset tars, a Hugging Face dataset.

``open_source(spec)`` reads the ``--data`` value of every command (``encode``, ``evaluate``,
``build-codebook``, ``train``):

* ``FOLDER`` (with an optional ``file_list``): ``vqgan_lc.data.ImageList``, as always;
* ``wds:PATTERN``: WebDataset tar shards, local paths or brace patterns
  (``wds:data/train-{000000..000099}.tar``, several joined by ``::``), expanded by the ``webdataset``
  package in its order. Samples are grouped the WebDataset way (``webdataset.tariterators.base_plus_ext``:
  the key is the member name up to the first dot of its base name); the image is the ``jpg``, ``jpeg``,
  ``png`` or ``webp`` member (first found in that order), the class the ``cls`` member (an integer).
  The tars are indexed here with ``tarfile`` (one pass over the headers; member offsets and sizes are
  kept in numpy arrays), and images are read by offset, because encoding needs random access by
  index, which webdataset's streaming reader does not give;
* ``hf:NAME_OR_DIR[:SPLIT]``: a ``datasets`` dataset, a ``save_to_disk`` directory or a Hub name
  (default split ``train``); the image column is the one of ``datasets.Image`` type (``image``/``img``
  first), the label column ``label`` (a ``ClassLabel`` gives the class names) or ``cls``.

Every source is an ordered, deterministic list of items with a stable ``key`` (``paths[i]``: the
relative path; ``TAR/KEY`` for tars; ``SPLIT/INDEX`` for datasets), a ``label`` (index into
``classes``, ``-1`` without a class), ``load(i)`` (a PIL RGB image; raises on a corrupt record, which
callers skip and record) and ``record(i)``, the small dict that changes when the item's bytes may
have changed (file size and mtime; tar size, mtime and member offset; dataset fingerprint).
Integer classes (``cls``, an integer label column) become ``classes = ("0", ..., str(max))`` so a
label equals the class id.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ._deps import require
from .data import UNLABELLED, ImageList, list_images, load_rgb
from .errors import ImageSourceError

log = logging.getLogger(__name__)

SourceKind = Literal["folder", "wds", "hf"]
WDS_PREFIX = "wds:"
HF_PREFIX = "hf:"
WDS_IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
WDS_CLASS_KEY = "cls"


@runtime_checkable
class ImageSource(Protocol):
    """What every consumer of images needs (``ImageList`` is the folder one).

    ``paths``: the items' stable keys, in order; ``labels``: class index per item (``-1`` none);
    ``classes``: class names; ``kind``: ``folder`` / ``wds`` / ``hf``.
    """

    @property
    def paths(self) -> tuple[str, ...]: ...

    @property
    def labels(self) -> tuple[int, ...]: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def kind(self) -> SourceKind: ...

    def __len__(self) -> int: ...

    def source_hash(self) -> str: ...

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image: ...

    def location(self, i: int) -> str: ...

    def record(self, i: int) -> dict[str, Any]: ...

    def subset(self, indices: Sequence[int]) -> ImageSource: ...

    def describe_source(self) -> dict[str, Any]: ...


def sources_digest(source: ImageSource, start: int, stop: int) -> str:
    """sha256 of ``record(i)`` of the sources ``[start, stop)``: what a token or feature shard records so that
    a rerun redoes it when one of its sources changed (a file's size and mtime; a tar's size and mtime and the
    member's offset; a dataset's fingerprint and row). A source that cannot be stat'ed records null."""
    h = hashlib.sha256()
    for i in range(start, stop):
        try:
            rec: dict[str, Any] | None = source.record(i)
        except OSError:
            rec = None
        h.update(f"{i}:{json.dumps(rec, sort_keys=True)}\n".encode())
    return h.hexdigest()


def source_hash_of(paths: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> str:
    """sha256 of the ordered ``key<TAB>class name`` lines (the rule of ``ImageList.source_hash``)."""
    h = hashlib.sha256()
    for p, lab in zip(paths, labels):
        h.update(f"{p}\t{classes[lab] if lab >= 0 else ''}\n".encode())
    return h.hexdigest()


def _classes_for(values: Sequence[str | None]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and labels of raw class values: non-negative integers map to themselves (classes
    ``"0".."max"``); other strings to their index in the sorted names."""
    names = {v for v in values if v is not None}
    try:
        ints = {v: int(v) for v in names}
        if all(i >= 0 for i in ints.values()):
            top = max(ints.values(), default=-1)
            return tuple(str(i) for i in range(top + 1)), tuple(UNLABELLED if v is None else ints[v] for v in values)
    except ValueError:
        pass
    classes = tuple(sorted(names))
    index = {c: i for i, c in enumerate(classes)}
    return classes, tuple(UNLABELLED if v is None else index[v] for v in values)


# ----------------------------------------------------------------------------------------- WebDataset tars
@dataclass(frozen=True)
class TarIndex:
    """Where each item's image lies: ``tar[i]`` (index into ``tars``), ``offset[i]``, ``size[i]`` (bytes);
    ``size[i] == -1`` marks a sample without an image member (it loads as an error, so it is recorded)."""

    tars: tuple[str, ...]
    tar: np.ndarray
    offset: np.ndarray
    size: np.ndarray


@dataclass(frozen=True, eq=False)
class TarSource:
    """WebDataset tar shards as an ordered list of samples (``open_source("wds:...")``)."""

    pattern: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    index: TarIndex
    _fds: dict[tuple[int, int], int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> SourceKind:
        return "wds"

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:  # file descriptors stay in the process that opened them
        return {k: (v if k != "_fds" else {}) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def source_hash(self) -> str:
        return source_hash_of(self.paths, self.labels, self.classes)

    def _fd(self, t: int) -> int:
        key = (os.getpid(), t)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(self.index.tars[t], os.O_RDONLY)
        return fd

    def read_bytes(self, i: int) -> bytes:
        """The image member's bytes of item ``i`` (``ValueError`` when the sample has none)."""
        size = int(self.index.size[i])
        if size < 0:
            raise ValueError(f"sample has no image member ({', '.join(WDS_IMAGE_KEYS)})")
        data = os.pread(self._fd(int(self.index.tar[i])), size, int(self.index.offset[i]))  # thread-safe
        if len(data) != size:
            raise OSError(f"tar {self.index.tars[int(self.index.tar[i])]} ends inside this member")
        return data

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        return load_rgb(io.BytesIO(self.read_bytes(i)), draft)  # type: ignore[arg-type]

    def location(self, i: int) -> str:
        return f"{self.index.tars[int(self.index.tar[i])]}:{self.paths[i].split('/', 1)[1]}"

    def record(self, i: int) -> dict[str, Any]:
        path = self.index.tars[int(self.index.tar[i])]
        st = os.stat(path)
        return {"tar": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "offset": int(self.index.offset[i])}

    def subset(self, indices: Sequence[int]) -> TarSource:
        idx = np.asarray(indices, dtype=np.int64)
        ix = self.index
        return TarSource(self.pattern, tuple(self.paths[i] for i in idx), tuple(self.labels[i] for i in idx),
                         self.classes, TarIndex(ix.tars, ix.tar[idx], ix.offset[idx], ix.size[idx]))

    def describe_source(self) -> dict[str, Any]:
        return {"kind": "wds", "tars": [Path(t).name for t in self.index.tars]}


def expand_tar_pattern(pattern: str) -> list[str]:
    """The tar paths of a WebDataset pattern (brace expansion and ``::`` lists, by ``webdataset``)."""
    require("webdataset", "wds", "reading WebDataset tars (--data wds:...)")
    from webdataset.shardlists import expand_urls

    return [str(u) for u in expand_urls(pattern)]


def open_tars(pattern: str) -> TarSource:
    """Index the WebDataset tars named by ``pattern`` (see the module docstring)."""
    from webdataset.tariterators import base_plus_ext

    tars = expand_tar_pattern(pattern)
    if not tars:
        raise ImageSourceError(f"the pattern {pattern!r} names no tar file; check --data wds:PATTERN")
    names = [Path(t).name for t in tars]
    if len(set(names)) != len(names):
        raise ImageSourceError(f"{pattern!r} names two tars with the same file name; give each shard a unique name")
    keys: list[str] = []
    cls: list[str | None] = []
    tar_i: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    for t, path in enumerate(tars):
        if not Path(path).is_file():
            raise ImageSourceError(f"tar {path} does not exist; check --data wds:PATTERN")
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(path, "r:") as tf:  # uncompressed tars only: members are read by offset
                for m in tf:
                    if not m.isfile():
                        continue
                    base, ext = base_plus_ext(m.name)
                    if base is None or Path(m.name).name.startswith("."):
                        continue
                    samples.setdefault(base, {})[ext.lower()] = m
                cls_bytes = {b: tf.extractfile(s[WDS_CLASS_KEY]).read()  # type: ignore[union-attr]
                             for b, s in samples.items() if WDS_CLASS_KEY in s}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageSourceError(f"tar {path} is truncated or not an uncompressed tar ({e}); "
                                   "re-create it or leave it out of the pattern") from e
        for base, members in samples.items():  # tar order, as webdataset yields them
            img = next((members[k] for k in WDS_IMAGE_KEYS if k in members), None)
            keys.append(f"{names[t]}/{base}")
            raw = cls_bytes.get(base)
            cls.append(raw.decode("utf-8", "replace").strip() if raw is not None else None)
            tar_i.append(t)
            offsets.append(img.offset_data if img is not None else 0)
            sizes.append(img.size if img is not None else -1)
    if not keys:
        raise ImageSourceError(f"the tars of {pattern!r} hold no samples; check --data wds:PATTERN")
    if len(set(keys)) != len(keys):
        raise ImageSourceError(f"{pattern!r} has a sample key twice in one tar; each sample needs a unique key")
    classes, labels = _classes_for(cls)
    index = TarIndex(tuple(tars), np.asarray(tar_i, np.int32), np.asarray(offsets, np.int64), np.asarray(sizes, np.int64))
    log.info("%s: %d samples in %d tars", pattern, len(keys), len(tars))
    return TarSource(pattern, tuple(keys), labels, classes, index)


# ----------------------------------------------------------------------------------------- HF datasets
@dataclass(frozen=True, eq=False)
class HFSource:
    """A Hugging Face ``datasets.Dataset`` as an ordered list of images (``open_source("hf:...")``)."""

    name: str
    split: str
    dataset: Any  # datasets.Dataset with the image column cast to Image(decode=False)
    image_column: str
    fingerprint: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    rows: np.ndarray  # dataset row of each item

    @property
    def kind(self) -> SourceKind:
        return "hf"

    def __len__(self) -> int:
        return len(self.paths)

    def source_hash(self) -> str:
        return source_hash_of(self.paths, self.labels, self.classes)

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        cell = self.dataset[int(self.rows[i])][self.image_column]
        if cell is None:
            raise ValueError("the image cell is empty")
        if isinstance(cell, dict) and cell.get("bytes"):
            return load_rgb(io.BytesIO(cell["bytes"]), draft)  # type: ignore[arg-type]
        if isinstance(cell, dict) and cell.get("path"):
            return load_rgb(cell["path"], draft)
        raise ValueError("the image cell has neither bytes nor a path")

    def location(self, i: int) -> str:
        return f"{self.name}[{self.split}][{int(self.rows[i])}]"

    def record(self, i: int) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "row": int(self.rows[i])}

    def subset(self, indices: Sequence[int]) -> HFSource:
        idx = np.asarray(indices, dtype=np.int64)
        return HFSource(self.name, self.split, self.dataset, self.image_column, self.fingerprint,
                        tuple(self.paths[i] for i in idx), tuple(self.labels[i] for i in idx), self.classes,
                        self.rows[idx])

    def describe_source(self) -> dict[str, Any]:
        return {"kind": "hf", "split": self.split, "fingerprint": self.fingerprint}


def _split_hf_spec(spec: str) -> tuple[str, str | None]:
    if Path(spec).exists() or ":" not in spec:
        return spec, None
    name, split = spec.rsplit(":", 1)
    return name, split or None


def open_hf(spec: str) -> HFSource:
    """A ``datasets`` dataset from ``NAME_OR_DIR[:SPLIT]`` (see the module docstring)."""
    require("datasets", "wds", "reading Hugging Face datasets (--data hf:...)")
    import datasets

    name, split = _split_hf_spec(spec)
    if Path(name).is_dir():
        try:
            ds: Any = datasets.load_from_disk(name)
        except (FileNotFoundError, ValueError) as e:
            raise ImageSourceError(f"{name} is not a datasets save_to_disk directory ({e}); check --data hf:DIR") from e
    else:
        ds = datasets.load_dataset(name, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        chosen = split or ("train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None))
        if chosen is None or chosen not in ds:
            raise ImageSourceError(f"{name} has the splits {', '.join(ds)}; name one as --data hf:{name}:SPLIT")
        ds, split = ds[chosen], chosen
    split = split or str(ds.split or "train")
    feats = ds.features
    image_cols = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
    image_col = next((c for c in ("image", "img") if c in image_cols), image_cols[0] if image_cols else None)
    if image_col is None:
        raise ImageSourceError(f"{name} has no image column (of datasets.Image type) among {', '.join(feats)}")
    label_col = next((c for c in ("label", "labels", "cls") if c in feats), None)
    if label_col is None:
        label_col = next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    fingerprint = str(ds._fingerprint)
    n = len(ds)
    if label_col is not None and isinstance(feats[label_col], datasets.ClassLabel):
        classes = tuple(feats[label_col].names)
        labels = tuple(UNLABELLED if v is None or v < 0 else int(v) for v in ds[label_col])
    elif label_col is not None:
        classes, labels = _classes_for([None if v is None else str(v) for v in ds[label_col]])
    else:
        classes, labels = (), (UNLABELLED,) * n
    if n == 0:
        raise ImageSourceError(f"{name} split {split} has no rows; check --data hf:NAME[:SPLIT]")
    ds = ds.cast_column(image_col, datasets.Image(decode=False))
    width = max(8, len(str(n - 1)))
    paths = tuple(f"{split}/{i:0{width}d}" for i in range(n))
    return HFSource(name, split, ds, image_col, fingerprint, paths, labels, classes, np.arange(n, dtype=np.int64))


# ----------------------------------------------------------------------------------------- the front door
def source_kind(spec: str | os.PathLike) -> SourceKind:
    s = str(spec)
    return "wds" if s.startswith(WDS_PREFIX) else "hf" if s.startswith(HF_PREFIX) else "folder"


def open_source(spec: str | os.PathLike | ImageSource, file_list: str | os.PathLike | None = None) -> ImageSource:
    """The images named by a ``--data`` value: ``FOLDER`` (optionally with ``file_list``), ``wds:PATTERN``
    or ``hf:NAME_OR_DIR[:SPLIT]``; an ``ImageSource`` is returned as is."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    s = str(spec)
    kind = source_kind(s)
    if kind != "folder" and file_list is not None:
        raise ImageSourceError("--file-list applies to an image folder only; drop it for --data wds:/hf:")
    if kind == "wds":
        return open_tars(s[len(WDS_PREFIX):])
    if kind == "hf":
        return open_hf(s[len(HF_PREFIX):])
    return list_images(spec, file_list)


__all__ = [
    "HF_PREFIX",
    "WDS_CLASS_KEY",
    "WDS_IMAGE_KEYS",
    "WDS_PREFIX",
    "HFSource",
    "ImageList",
    "ImageSource",
    "SourceKind",
    "TarIndex",
    "TarSource",
    "expand_tar_pattern",
    "open_hf",
    "open_source",
    "open_tars",
    "source_hash_of",
    "source_kind",
]
