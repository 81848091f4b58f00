"""Token directories: what a dataset becomes after ``vqgan-lc encode``.

Layout (format version 1)::

    TOKENS/
      manifest.json        format, version, tokenizer, grid, dtype, counts, shards, options, skipped
      shard-00000.npy      (n, h, w) uint32 ids of the images of source range [start, stop)
      shard-00000.json     that shard's record: source range, kept source indices, skipped files, sha256
      labels.npy           (N,) int64 class index per row (-1 without a class)
      paths.txt            the source path of each row, in row order

Rows are the readable images in sorted source order. uint32 holds every id of a 100k codebook
(uint16 stops at 65,535). Every file is written to a temporary name, fsynced and renamed, so a
crash never leaves a partial file visible, and nothing in it depends on timing, so reruns are
byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes, atomic_write_json, atomic_write_npy, read_format_json, sha256_file
from ..errors import TokenFormatError

TOKENS_FORMAT = "vqgan-lc-tokens"
TOKENS_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<u4")



def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a token directory, after checking format and version."""
    return read_format_json(
        Path(directory) / MANIFEST, TOKENS_FORMAT, TOKENS_FORMAT_VERSION,
        what="vqgan-lc token manifest", error=TokenFormatError,
        missing=f"{directory} has no {MANIFEST}: not a token directory, or an encode run that has not finished "
        "(rerun the same `vqgan-lc encode` command to complete it)",
    )


@dataclass
class TokenFile:
    """A read-only view of a token directory.

    ``ids[i]`` is the ``(h, w)`` uint32 id map of row ``i``; ``ids[a:b]`` stacks rows. Shards are
    numpy memmaps, so opening a 1M-image directory reads no ids.
    """

    directory: Path
    manifest: dict[str, Any]
    shards: list[np.ndarray]
    labels: np.ndarray
    paths: list[str]

    def __post_init__(self) -> None:
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.manifest["grid"]
        return int(h), int(w)

    @property
    def codebook_size(self) -> int:
        return int(self.manifest["tokenizer"]["codebook_size"])

    def row(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i %= n
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self.shards[s][i - self._offsets[s]]

    def __getitem__(self, index: int | slice | Sequence[int]) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.row(int(index))
        rows = range(len(self))[index] if isinstance(index, slice) else index
        h, w = self.grid
        return np.stack([self.row(int(i)) for i in rows]) if len(rows) else np.empty((0, h, w), TOKEN_DTYPE)

    @property
    def ids(self) -> TokenFile:
        """Alias so ``tokens.ids[i]`` reads naturally."""
        return self


def open_tokens(directory: str | os.PathLike, *, verify: bool = True) -> TokenFile:
    """Open a token directory written by ``vqgan-lc encode``.

    ``verify=True`` checks every shard's sha256 against the manifest (about 1 s per GB); a missing
    or corrupt shard raises ``TokenFormatError`` naming it.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    h, w = manifest["grid"]
    shards = []
    for rec in manifest["shards"]:
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
        if arr.dtype != TOKEN_DTYPE or arr.shape != (rec["rows"], h, w):
            raise TokenFormatError(f"shard {path} has shape {arr.shape} {arr.dtype}, manifest says ({rec['rows']}, {h}, {w}) uint32")
        shards.append(arr)
    labels = np.load(directory / manifest["labels_file"], allow_pickle=False)
    paths = (directory / manifest["paths_file"]).read_text().splitlines()
    if len(labels) != manifest["num_rows"] or len(paths) != manifest["num_rows"]:
        raise TokenFormatError(f"{directory}: labels/paths do not have {manifest['num_rows']} rows")
    return TokenFile(directory=directory, manifest=manifest, shards=shards, labels=labels, paths=paths)


class TokenDataset(torch.utils.data.Dataset):
    """Rows of a token directory as ``(ids (h, w) int64, label int)`` for training a prior."""

    def __init__(self, directory: str | os.PathLike, *, verify: bool = True) -> None:
        self.tokens = open_tokens(directory, verify=verify)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ids = torch.from_numpy(self.tokens.row(i).astype(np.int64))
        return ids, int(self.tokens.labels[i])


__all__ = [
    "MANIFEST",
    "TOKENS_FORMAT",
    "TOKENS_FORMAT_VERSION",
    "TOKEN_DTYPE",
    "TokenDataset",
    "TokenFile",
    "TokenFormatError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "open_tokens",
    "read_manifest",
    "sha256_file",
    "shard_name",
]
