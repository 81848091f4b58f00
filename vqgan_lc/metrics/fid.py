"""Reconstruction FID (rFID) with torchmetrics' ``FrechetInceptionDistance`` and a local Inception file.

Implementation: ``torchmetrics.image.fid.FrechetInceptionDistance(feature=2048)``, whose feature
extractor is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF "inception-2015-12-05" graph
ported to PyTorch, pool3 2048-d features). The weights file is the PyTorch port of that graph:
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's name) or
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's name) -- a state dict with keys such
as ``Conv2d_1a_3x3.conv.weight`` and ``fc.weight`` (1008 x 2048). clean-fid's TorchScript
``inception-2015-12-05.pt`` is a different format and is refused with a message.

Images enter as ``uint8`` (what a saved PNG holds) and are resized to 299 x 299 by torchmetrics with
antialiased bilinear interpolation (``antialias=True``, closer to clean-fid's PIL resize than
torch-fidelity's TF1-compatible one). The Fréchet distance is ``||mu1 - mu2||^2 + Tr(S1 + S2 -
2 (S1 S2)^(1/2))`` with the trace of the square root from the eigenvalues of ``S1 S2``.

Deviation from the official protocol: VQGAN-LC runs clean-fid between PNG reconstructions and the
*uncropped* ImageNet val JPEGs; here the reference set is the evaluated originals themselves (the
same resize and center crop), the usual practice. FID over a few hundred images is strongly biased
upwards (the 2048 x 2048 covariances are rank-deficient below 2048 images): compare numbers only at
equal image counts; the report states the count.

torch-fidelity reads its weights with an unrestricted ``torch.load``; to keep that away from a
user's file, the file is read here with ``torch.load(weights_only=True)`` (or safetensors), checked,
and re-saved to a private temporary file that torch-fidelity then reads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .._io import load_weights_file
from ..errors import CheckpointError, MissingWeightsError

FID_FEATURES = 2048
FID_IMPLEMENTATION = (
    "torchmetrics.image.fid.FrechetInceptionDistance(feature=2048, antialias=True) with torch-fidelity's "
    "FeatureExtractorInceptionV3 (inception-2015-12-05 weights from a local file)"
)
_REQUIRED = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}


def read_inception_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read and check an Inception-v3 FID weights file without unrestricted pickle; returns the state dict.
    ``path`` may be a standard name (``torch-fidelity``, ``pytorch-fid``, their file names or URLs): read from --
    or, unless offline, fetched into -- the torch hub cache (``vqgan_lc.named_weights``)."""
    from ..named_weights import resolve_checkpoint

    path = resolve_checkpoint(path, "inception", option="--inception-weights") or Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"Inception weights file {path} does not exist; pass a local pt_inception-2015-12-05-6726825d.pth "
            "with --inception-weights"
        )
    state = load_weights_file(path, "--inception-weights")
    for key, shape in _REQUIRED.items():
        if key not in state or tuple(state[key].shape) != shape:
            hint = " (clean-fid's TorchScript inception-2015-12-05.pt is not supported)" if key not in state else ""
            raise CheckpointError(
                f"{path} is not the FID Inception-v3 state dict (needs {key} of shape {shape}){hint}; use "
                "pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or weights-inception-2015-12-05-6726825d.pth "
                "(torch-fidelity)"
            )
    return state


def build_fid(inception_weights: str | os.PathLike, *, device: str | torch.device = "cpu"):  # noqa: ANN201
    """A ``torchmetrics`` ``FrechetInceptionDistance`` (2048-d pool features) loaded from a local file.

    Feed it with ``update(uint8 images (B, 3, H, W), real=True|False)``; ``compute()`` needs at least two
    images on each side.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    state = read_inception_weights(inception_weights)
    with tempfile.TemporaryDirectory(prefix="vqgan-lc-fid-") as tmp:
        private = Path(tmp) / "inception.pth"
        torch.save({k: v.contiguous() for k, v in state.items()}, private)
        del state
        try:
            metric = FrechetInceptionDistance(
                feature=FID_FEATURES, normalize=False, antialias=True, feature_extractor_weights_path=str(private)
            )
        except RuntimeError as e:  # load_state_dict(strict=True) of torch-fidelity's network
            raise CheckpointError(
                f"{inception_weights} does not fit torch-fidelity's Inception-v3 ({str(e).splitlines()[0]})"
            ) from e
    return metric.to(device)


__all__ = ["FID_FEATURES", "FID_IMPLEMENTATION", "build_fid", "read_inception_weights"]
