"""Helpers of the training tests: photo folders, a random codebook, a tiny module and a quiet Trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import PHOTO_NAMES, photo
from PIL import Image

from vqgan_lc.build import ModelSpec
from vqgan_lc.codebook import save_codebook
from vqgan_lc.train import ImageDataModule, LossConfig, OptimConfig, VQGANLCModule


@pytest.fixture(autouse=True, scope="module")
def single_thread():  # noqa: ANN201 - a generator fixture
    """One intra-op thread for these tests: on a 2-core machine shared with other jobs, OpenMP's
    spinning threads make a tiny conv step 5-40x slower than one thread; on an idle one it costs ~1.5x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_photos(folder: Path, names: tuple[str, ...] = PHOTO_NAMES, max_side: int = 160) -> list[Path]:
    """The scikit-image photographs as JPEGs, downscaled to ``max_side`` (decoding stays cheap)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        img = Image.fromarray(photo(name))
        img.thumbnail((max_side, max_side), Image.BICUBIC)
        p = folder / f"{name}.jpg"
        img.save(p, quality=92)
        out.append(p)
    return out


def write_truncated_jpeg(path: Path, name: str = "coffee") -> Path:
    """A real JPEG cut in half: PIL opens its header but cannot decode it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(name)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_codebook(path: Path, n: int = 1024, seed: int = 0) -> Path:
    """A random ``(n, 768)`` codebook, scaled like a fresh encoder's latents (see tests/test_model.py)."""
    g = torch.Generator().manual_seed(seed)
    return save_codebook(path, torch.randn(n, 768, generator=g) * 0.03, {"extractor": "random", "seed": seed})


def module_groups(**kw: Any) -> dict[str, Any]:
    """Flat settings (``codebook=..., disc_start=..., max_steps=...``) sorted into VQGANLCModule's typed groups."""
    names = {group: {f.name for f in dataclasses.fields(cls)}
             for group, cls in (("model", ModelSpec), ("loss", LossConfig), ("optim", OptimConfig))}
    groups: dict[str, dict[str, Any]] = {"model": {}, "loss": {}, "optim": {}}
    out: dict[str, Any] = {}
    for key, value in kw.items():
        group = next((g for g, fields in names.items() if key in fields), None)
        if group is None:
            out[key] = value  # num_grid_images
        else:
            groups[group][key] = value
    return {"model": ModelSpec(**groups["model"]), "loss": LossConfig(**groups["loss"]),
            "optim": OptimConfig(**groups["optim"]), **out}


def tiny_module(codebook: Path | None, **kw: Any) -> VQGANLCModule:
    args: dict[str, Any] = dict(preset="tiny", codebook=str(codebook) if codebook else None, perceptual_weight=0.0,
                                disc_start=3, warmup_steps=0, max_steps=4, num_grid_images=4)
    args.update(kw)
    return VQGANLCModule(**module_groups(**args))


def data_module(folder: Path, **kw: Any) -> ImageDataModule:
    args: dict[str, Any] = dict(image_size=32, batch_size=2, num_workers=0, samples_per_epoch=8)
    args.update(kw)
    return ImageDataModule(str(folder), **args)


def trainer(root: Path, **kw: Any) -> pl.Trainer:
    args: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(root), log_every_n_steps=1,
    )
    args.update(kw)
    return pl.Trainer(**args)


def adam_steps(opt: torch.optim.Optimizer) -> int:
    """How many times an Adam optimizer has stepped (0 before its first step)."""
    state = next(iter(opt.state.values()), None)
    return 0 if state is None else int(state["step"])


def center_crops(folder: Path, size: int) -> torch.Tensor:
    """The validation transform computed independently: shortest side -> size (bicubic, the longer side
    truncated as torchvision's Resize), center crop (offset rounded as torchvision's center_crop)."""
    out = []
    for p in sorted(folder.glob("*.jpg")):
        img = Image.open(p).convert("RGB")
        w, h = img.size
        if min(w, h) != size:
            img = img.resize((size, int(size * h / w)) if w <= h else (int(size * w / h), size), Image.BICUBIC)
        w, h = img.size
        x, y = int(round((w - size) / 2)), int(round((h - size) / 2))
        arr = np.asarray(img.crop((x, y, x + size, y + size)), dtype=np.float32) / 127.5 - 1.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)
