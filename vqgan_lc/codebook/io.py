"""Codebook files: ``codebook.safetensors`` (ours, with provenance) and the official ``.pth`` tensor.

Ours holds one tensor ``codebook`` of shape ``(N, d)`` (float32) and string metadata: ``format``,
``format_version`` and a JSON ``provenance`` (extractor, weights hash, layer, pooling, image size,
k, per-class k, seed, class order, source list hash, ...). Row order is deterministic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .._io import atomic_save_safetensors, check_format, load_failure_reason
from ..errors import CodebookError, UnknownFormatError
from ..formats import Description

CODEBOOK_FORMAT = "vqgan-lc-codebook"
CODEBOOK_FORMAT_VERSION = 1


@dataclass
class Codebook:
    """A ``(N, d)`` float32 codebook and where it came from."""

    vectors: torch.Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def save_codebook(path: str | os.PathLike, vectors: torch.Tensor, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``vectors`` (N, d) and JSON-serialisable ``provenance`` atomically to ``path``."""
    path = Path(path)
    _check_vectors(vectors, path)
    meta = {
        "format": CODEBOOK_FORMAT,
        "format_version": str(CODEBOOK_FORMAT_VERSION),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(path, {"codebook": vectors.detach().float().contiguous().cpu()}, meta)
    return path


def load_codebook(path: str | os.PathLike) -> Codebook:
    """Read a codebook: ours (``.safetensors``), the official release (``codebook-100K.pth``) or DiGIT's
    released k-means centroids (``km_8k.npy``, a (K, d) array; read with ``allow_pickle=False``).

    The official file is a pickled float32 tensor; it is read with ``torch.load(weights_only=True)``,
    which refuses anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"codebook file {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix == ".npy":
        return _load_npy(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad pickle
        raise CodebookError(
            f"{path} is not a readable codebook: expected our .safetensors file or the official "
            f".pth holding one float tensor ({type(e).__name__}: {load_failure_reason(e)})"
        ) from e
    if isinstance(obj, dict) and len(obj) == 1:  # tolerate {"codebook": tensor}-style wrappers
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise CodebookError(f"{path} holds a {type(obj).__name__}, not a (N, d) codebook tensor")
    _check_vectors(obj, path)
    return Codebook(obj.float().contiguous(), {"source": "official-pth", "file": path.name})


def _load_npy(path: Path) -> Codebook:
    """DiGIT's released centroids (``km_8k.npy``, ``km_16k.npy``): a (K, d) float array, read without
    pickle (``allow_pickle=False``)."""
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CodebookError(f"{path} is not a readable .npy array of centroids ({e}); pass a (K, d) float "
                            "array such as DiGIT's km_8k.npy") from e
    if arr.dtype.kind != "f":
        raise CodebookError(f"{path} holds {arr.dtype} values; centroids must be a (K, d) float array")
    vectors = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    _check_vectors(vectors, path)
    return Codebook(vectors, {"source": "digit-npy", "file": path.name})


def _load_safetensors(path: Path) -> Codebook:
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CodebookError(f"{path} is corrupt or not a safetensors file ({e})") from e
    version = meta.get("format_version", "")  # safetensors metadata values are strings
    check_format({"format": meta.get("format"), "format_version": int(version) if version.isdigit() else version},
                 path, CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION, what="vqgan-lc codebook", error=CodebookError)
    if "codebook" not in tensors:
        raise CodebookError(f"{path} is a safetensors file but not a vqgan-lc codebook (no 'codebook' tensor)")
    vectors = tensors["codebook"]
    _check_vectors(vectors, path)
    return Codebook(vectors.float().contiguous(), json.loads(meta.get("provenance", "{}")))


def _check_vectors(v: torch.Tensor, path: Path) -> None:
    if v.dim() != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise CodebookError(f"{path}: a codebook must be a non-empty (N, d) matrix, got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        raise CodebookError(f"{path}: codebook dtype {v.dtype} is not a float type")
    if not torch.isfinite(v).all():
        raise CodebookError(f"{path}: the codebook contains NaN or infinite values")


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a codebook file: size, dim and the recorded provenance (ours), or the size of
    the official ``.pth`` tensor."""
    if path.suffix != ".safetensors":
        try:
            cb = load_codebook(path)
        except CodebookError as e:
            raise UnknownFormatError(
                f"{path} is not the official codebook file (one pickled (N, d) float tensor), and an official model "
                "checkpoint is turned into a model directory with `vqgan-lc convert`."
            ) from e
        return Description("official codebook file", None, None, {"codebook_size": cb.size, "dim": cb.dim},
                           {"provenance": cb.provenance})
    cb = load_codebook(path)
    p = cb.provenance
    fields = {
        "codebook_size": cb.size,
        "dim": cb.dim,
        "extractor": p.get("extractor"),
        "model": p.get("model"),
        "mode": p.get("mode"),
        "per_class_k": p.get("per_class_k"),
        "pooling": p.get("pooling"),
        "images": p.get("num_images"),
    }
    return Description("codebook file", CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION,
                       {k: v for k, v in fields.items() if v is not None or k in ("codebook_size", "dim")},
                       {"provenance": p})
