"""Shared test helpers: the official-format fixture and real photographs from scikit-image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Lightning gives its loggers a StreamHandler bound to the sys.stderr of the moment it is first imported.
# Imported first inside a test that uses capsys, that stream is closed after the test and every later
# Lightning log line prints "--- Logging error ---" into the next test's captured stderr (which the
# one-error-line assertions read). Import it here, while the session's stream is in place.
with contextlib.suppress(ImportError):
    import lightning.pytorch  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OFFICIAL_TINY = FIXTURES / "official-format-tiny"

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


@pytest.fixture(scope="session", autouse=True)
def _private_torch_hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty torch hub cache (``$TORCH_HOME``) for the session: weights a developer has cached (the LPIPS
    trunks, FID Inception) are found by default, so tests must not see them; tests that want a warm cache
    populate their own."""
    import os

    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    yield
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    """../shared/fixtures/official-format-tiny; skipped where that folder is absent (a user's clone)."""
    if not (OFFICIAL_TINY / "vqgan_lc_official_format.pth").is_file():
        pytest.skip(f"golden fixture not found at {OFFICIAL_TINY} (it ships beside the repo in CI only)")
    return OFFICIAL_TINY


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph from scikit-image (bundled offline)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def photo_crops(size: int, n: int, seed: int = 0, names: tuple[str, ...] = PHOTO_NAMES) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops of the photographs, (n, 3, size, size) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    imgs = [photo(nm) for nm in names]
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        out.append(img[y : y + size, x : x + size])
    arr = np.stack(out).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    on a shared 2-core machine run far faster without OpenMP contention; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_sample_photos(
    directory: str | Path, names: tuple[str, ...] = PHOTO_NAMES, max_side: int | None = 512
) -> list[Path]:
    """Write scikit-image's bundled photographs as JPEGs (quality 95) into ``directory``; returns the paths.

    Images larger than ``max_side`` are downscaled (bicubic, ``thumbnail``) so decoding stays cheap;
    ``None`` keeps the originals.
    """
    from PIL import Image

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = Image.fromarray(photo(name))
        if max_side is not None:
            img.thumbnail((max_side, max_side), Image.BICUBIC)
        p = out / f"{name}.jpg"
        img.save(p, quality=95)
        paths.append(p)
    return paths


@pytest.fixture
def crops64() -> torch.Tensor:
    return photo_crops(64, 6)


def write_photo_folder(root: Path, per_class: int = 3, size: int = 96, seed: int = 0, fmt: str = "JPEG") -> list[Path]:
    """A folder of real photographs: class sub-folders ``a_*`` of random crops saved as JPEG/PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = []
    for ci, name in enumerate(PHOTO_NAMES[:3]):
        img = photo(name)
        d = root / f"class_{ci}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = img.shape[:2]
            s = int(rng.integers(size, min(h, w) + 1))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = Image.fromarray(img[y : y + s, x : x + s]).resize((size + 8 * j, size), Image.BICUBIC)
            p = d / f"img_{j:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            crop.save(p, fmt)
            written.append(p)
    return written


def tiny_model(seed: int = 0, **overrides: Any):  # noqa: ANN201
    """The tiny preset with a small random codebook scaled to the latents' size (ids then vary)."""
    from vqgan_lc import create_model

    torch.manual_seed(seed)
    return create_model("tiny", codebook=torch.randn(512, 768) * 0.03, **overrides).eval()


TINY_DINOV2_ARCH = "vit_small_patch14_reg4_dinov2"
TINY_DINOV2 = dict(embed_dim=48, depth=6, num_heads=3)  # DINOv2-shaped: patch 14, 4 registers


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A class folder of real photographs (3 per class, 96 px JPEGs)."""
    write_photo_folder(tmp_path / "photos", per_class=3)
    return tmp_path / "photos"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A saved tiny VQGAN-LC (``tiny_model()``, seed 0)."""
    return tiny_model().save_pretrained(tmp_path / "model")


def tiny_digit_tokenizer(k: int = 32, seed: int = 0):  # noqa: ANN201
    """A DiGIT tokenizer over a random-weight 6-block DINOv2-shaped ViT (48-d) and ``k`` random centroids
    (weights kept in memory, so ``save_pretrained`` embeds them)."""
    import timm

    from vqgan_lc.codebook import Codebook
    from vqgan_lc.digit import DiscriminativeTokenizer, ExtractorSpec, build_dinov2

    torch.manual_seed(seed)
    spec = ExtractorSpec(model=TINY_DINOV2_ARCH, model_kwargs=TINY_DINOV2)
    vit = timm.create_model(TINY_DINOV2_ARCH, pretrained=False, img_size=224, num_classes=0, **TINY_DINOV2)
    ext = build_dinov2(spec, vit.state_dict())
    centroids = Codebook(torch.randn(k, 48), {"extractor": "dinov2", "extractor_info": {"block_index": 3, "depth": 6}})
    return DiscriminativeTokenizer(ext, centroids, spec=spec)
