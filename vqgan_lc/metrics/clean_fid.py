"""rFID as the official VQGAN-LC evaluation computes it: clean-fid, mode ``"clean"``.

The official ``eval_reconstruction.py`` saves every reconstruction as a uint8 PNG (clamped to [-1, 1],
``(x + 1) * 127.5`` cast by truncation) and runs clean-fid between that folder and the *uncropped*
validation images, which clean-fid resizes to 299 x 299 itself (PIL bicubic on float32 channels,
aspect ratio not kept). ``clean_fid`` does the same with the reference given as a list of files (the
evaluated images' original files) rather than a whole folder.

The Inception network is clean-fid's own TorchScript file ``inception-2015-12-05.pt``, found at a
local path or in clean-fid's cache folder (``/tmp``; ``./`` on Windows), never downloaded here.
This file is separate from ``vqgan_lc.metrics.fid`` (torchmetrics / torch-fidelity, the standard
protocol).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._deps import require
from ..errors import MissingWeightsError

log = logging.getLogger(__name__)

CLEANFID_INCEPTION = "inception-2015-12-05.pt"
CLEANFID_IMPLEMENTATION = ("clean-fid, mode 'clean' (Inception-v3 TorchScript inception-2015-12-05.pt, PIL bicubic "
                           "resize to 299 on float32 channels): reconstructions saved as uint8 PNG (truncated) vs "
                           "the uncropped original files, as the official eval_reconstruction.py")

FeatureModel = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 3, 299, 299)`` float images in [0, 255] -> ``(B, D)`` features (clean-fid's feature extractor)."""


def cleanfid_cache_dir() -> Path:
    """Where clean-fid itself keeps (and would download) ``inception-2015-12-05.pt``."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def find_cleanfid_inception(path: str | os.PathLike | None = None) -> Path:
    """The local ``inception-2015-12-05.pt``: ``path`` (the file or its folder) or clean-fid's cache.

    Raises ``MissingWeightsError`` naming the places looked at; nothing is downloaded.
    """
    looked: list[Path] = []
    if path is not None:
        p = Path(path)
        cand = p / CLEANFID_INCEPTION if p.is_dir() else p
        looked.append(cand)
        if cand.is_file():
            if cand.name != CLEANFID_INCEPTION:
                raise MissingWeightsError(f"{cand}: clean-fid loads its Inception from a file named {CLEANFID_INCEPTION}; "
                                          "rename the file or pass its folder")
            return cand
    else:
        cand = cleanfid_cache_dir() / CLEANFID_INCEPTION
        looked.append(cand)
        if cand.is_file():
            return cand
    raise MissingWeightsError(
        f"clean-fid's Inception weights were not found (looked at {', '.join(map(str, looked))}); download "
        f"{CLEANFID_INCEPTION} (stylegan2-ada-pytorch metrics) and pass --cleanfid-inception PATH"
    )


def cleanfid_feature_model(weights: str | os.PathLike | None, device: torch.device) -> FeatureModel:
    """clean-fid's Inception feature extractor loaded from the local file (see ``find_cleanfid_inception``)."""
    require("cleanfid", "eval", "the official rFID protocol (clean-fid)")
    from cleanfid.inception_torchscript import InceptionV3W

    file = find_cleanfid_inception(weights)
    model = InceptionV3W(str(file.parent), download=False, resize_inside=False).to(device).eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return features


def save_png_truncated(images: torch.Tensor, paths: Sequence[str | os.PathLike]) -> None:
    """``(B, 3, H, W)`` in [-1, 1] -> uint8 PNGs as the official evaluation writes them: clamped, then
    ``(x + 1) * 127.5`` cast by truncation (not rounding)."""
    arr = images.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).permute(0, 2, 3, 1).cpu().numpy()
    for a, p in zip(arr.astype(np.uint8), paths):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(p)


def clean_fid(
    reconstructions: Sequence[str | os.PathLike],
    references: Sequence[str | os.PathLike],
    *,
    feature_model: FeatureModel | None = None,
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
) -> float:
    """clean-fid (mode ``"clean"``) between two lists of image files.

    ``feature_model`` replaces clean-fid's Inception (tests); otherwise it is loaded from ``weights``
    or clean-fid's cache.
    """
    require("cleanfid", "eval", "the official rFID protocol (clean-fid)")
    from cleanfid import fid as cfid

    dev = torch.device(device)
    model = feature_model or cleanfid_feature_model(weights, dev)
    if min(len(reconstructions), len(references)) < 2:
        raise ValueError("FID needs at least 2 images on each side")
    kw = dict(model=model, num_workers=num_workers, batch_size=batch_size, device=dev, mode="clean", verbose=False)
    rec = cfid.get_files_features([str(p) for p in reconstructions], **kw)
    ref = cfid.get_files_features([str(p) for p in references], **kw)
    return float(cfid.fid_from_feats(rec, ref))


__all__ = [
    "CLEANFID_IMPLEMENTATION",
    "CLEANFID_INCEPTION",
    "FeatureModel",
    "clean_fid",
    "cleanfid_cache_dir",
    "cleanfid_feature_model",
    "find_cleanfid_inception",
    "save_png_truncated",
]
