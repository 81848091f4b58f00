"""Continuous latents beside the ids (``vqgan-lc encode --latents float16|float32``) and augmented variants.

A token directory written with ``--latents`` also holds ``latents-NNNNN.npy`` of shape ``(n, D', h, w)``
(``(n, A, D', h, w)`` with ``--augment``): the pre-quantization latent ``quant_conv(encoder(x))`` that
LDM, DiT and SiT train on (``encode_latents``), one row per row of the matching ids shard. Each is
written atomically with its sha256 and its per-channel float64 sums in the shard's record; the
manifest's ``latents`` block gives the dtype, the row shape, the per-channel mean and std over the
whole directory, and ``scale_factor = 1 / std`` (std over every element, LDM's ``scale_factor`` rule).

``--augment flip`` stores two variants per image (the centre crop, then its horizontal mirror);
``--augment ten-crop`` stores LlamaGen's ten: the shorter side is resized to ``int(1.1 * S)``, the
centre ``int(1.1 * S)`` square is kept, and torchvision's ``ten_crop`` order follows (top-left,
top-right, bottom-left, bottom-right, centre, then the same five of the mirrored square).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .._io import atomic_write_npy, sha256_file
from ..data import Preprocessing
from ..errors import TokenFormatError
from .format import ShardedRows, read_manifest

LatentDtype = Literal["float16", "float32"]
Augment = Literal["none", "flip", "ten-crop"]
AUGMENTS: tuple[str, ...] = ("none", "flip", "ten-crop")
LATENT_DTYPES: tuple[str, ...] = ("float16", "float32")
TEN_CROP_RANGE = 1.1  # LlamaGen's crop_range: the square the ten crops are taken from, relative to S
VARIANT_NAMES: dict[str, tuple[str, ...]] = {
    "none": ("center",),
    "flip": ("center", "center-flipped"),
    "ten-crop": ("top-left", "top-right", "bottom-left", "bottom-right", "center",
                 "top-left-flipped", "top-right-flipped", "bottom-left-flipped", "bottom-right-flipped",
                 "center-flipped"),
}


def latent_name(index: int) -> str:
    return f"latents-{index:05d}.npy"


def ten_crop_size(image_size: int) -> int:
    return int(image_size * TEN_CROP_RANGE)


class Variants:
    """PIL image -> ``(A, 3, S, S)`` float32 in [-1, 1]: the variants of ``augment`` (picklable, for workers)."""

    def __init__(self, image_size: int, augment: Augment) -> None:
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        self.size = image_size
        self.augment = augment
        self.pre = Preprocessing(ten_crop_size(image_size) if augment == "ten-crop" else image_size)

    def __call__(self, img: Any) -> torch.Tensor:
        x = self.pre(img)
        if self.augment == "flip":
            return torch.stack([x, x.flip(-1)])
        if self.augment == "ten-crop":
            return torch.stack([*five_crop(x, self.size), *five_crop(x.flip(-1), self.size)])
        return x[None]


def five_crop(x: torch.Tensor, s: int) -> list[torch.Tensor]:
    """torchvision's ``five_crop`` of a ``(3, H, W)`` tensor: corners then the (rounded) centre."""
    h, w = x.shape[-2:]
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return [x[:, :s, :s], x[:, :s, w - s:], x[:, h - s:, :s], x[:, h - s:, w - s:], x[:, top:top + s, left:left + s]]


def augment_record(augment: Augment, image_size: int) -> dict[str, Any]:
    """The manifest's ``augment`` block: mode, variant names in storage order, the square cropped from."""
    rec: dict[str, Any] = {"mode": augment, "variants": list(VARIANT_NAMES[augment])}
    if augment == "ten-crop":
        rec["crop_size"] = ten_crop_size(image_size)
    return rec


def write_latent_shard(out: Path, index: int, rows: np.ndarray, dtype: LatentDtype) -> dict[str, Any]:
    """Write ``latents-NNNNN.npy`` (``rows`` float32, (n, [A,] D', h, w)) and return its record:
    file, sha256, count and per-channel float64 ``sum`` / ``sumsq`` of the float32 values."""
    arr = np.ascontiguousarray(rows.astype(np.dtype(dtype).newbyteorder("<")))
    digest = atomic_write_npy(out / latent_name(index), arr)
    channels = rows.shape[-3]
    flat = np.moveaxis(rows.astype(np.float64), -3, 0).reshape(channels, rows.size // channels)
    return {"file": latent_name(index), "sha256": digest, "count": int(flat.shape[1]),
            "sum": flat.sum(axis=1).tolist(), "sumsq": np.square(flat).sum(axis=1).tolist()}


def latent_shard_ok(out: Path, rec: dict[str, Any]) -> bool:
    p = out / str(rec.get("file", ""))
    return p.is_file() and sha256_file(p) == rec.get("sha256")


def latent_summary(records: list[dict[str, Any]], dtype: str, row_shape: list[int]) -> dict[str, Any]:
    """The manifest's ``latents`` block from the shards' records (combined in shard order: deterministic)."""
    channels = row_shape[-3]
    s, sq, n = np.zeros(channels), np.zeros(channels), 0
    for r in records:
        s += np.asarray(r["sum"], np.float64)
        sq += np.asarray(r["sumsq"], np.float64)
        n += int(r["count"])
    mean = s / max(n, 1)
    var = np.maximum(sq / max(n, 1) - mean**2, 0.0)
    all_mean = s.sum() / max(n * channels, 1)
    all_std = float(np.sqrt(max(sq.sum() / max(n * channels, 1) - all_mean**2, 0.0)))
    return {"dtype": dtype, "row_shape": row_shape, "mean": mean.tolist(), "std": np.sqrt(var).tolist(),
            "std_all": all_std, "scale_factor": (1.0 / all_std) if all_std > 0 else 1.0,
            "files": [r["file"] for r in records], "sha256": [r["sha256"] for r in records]}


@dataclass
class LatentFile(ShardedRows):
    """A read-only view of the latents of a token directory: ``lat[i]`` is row ``i``'s ``(D', h, w)``
    latent (``(A, D', h, w)`` with augmented variants); memmapped shards; ``mean``/``std`` per channel and
    ``scale_factor`` from the manifest."""

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest["latents"]

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.info["mean"], np.float32)

    @property
    def std(self) -> np.ndarray:
        return np.asarray(self.info["std"], np.float32)

    @property
    def scale_factor(self) -> float:
        return float(self.info["scale_factor"])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.row(i)


def open_latents(directory: str | os.PathLike, *, verify: bool = True) -> LatentFile:
    """The latents of a token directory written with ``vqgan-lc encode --latents``; ``verify`` checks sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    info = manifest.get("latents")
    if not info:
        raise TokenFormatError(f"{directory} holds no latents; encode again with --latents float16 (or float32)")
    shards = []
    for rec, name, digest in zip(manifest["shards"], info["files"], info["sha256"]):
        path = directory / name
        if not path.is_file():
            raise TokenFormatError(f"latent shard {path} is missing; rerun `vqgan-lc encode` into {directory}")
        if verify and sha256_file(path) != digest:
            raise TokenFormatError(f"latent shard {path} is corrupt (sha256 differs); rerun `vqgan-lc encode`")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.shape != (rec["rows"], *info["row_shape"]) or arr.dtype != np.dtype(info["dtype"]):
            raise TokenFormatError(f"latent shard {path} has shape {arr.shape} {arr.dtype}, manifest says "
                                   f"({rec['rows']}, {', '.join(map(str, info['row_shape']))}) {info['dtype']}")
        shards.append(arr)
    return LatentFile(directory, manifest, shards)


__all__ = [
    "AUGMENTS",
    "LATENT_DTYPES",
    "TEN_CROP_RANGE",
    "VARIANT_NAMES",
    "Augment",
    "LatentDtype",
    "LatentFile",
    "Variants",
    "augment_record",
    "five_crop",
    "latent_name",
    "latent_shard_ok",
    "latent_summary",
    "open_latents",
    "ten_crop_size",
    "write_latent_shard",
]
