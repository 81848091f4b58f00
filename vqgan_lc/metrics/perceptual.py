"""LPIPS as an evaluation metric (AlexNet or VGG16 trunk), every weight read from a local file.

The network is the ``lpips`` package's ``LPIPS(net=..., version="0.1")``, built with ``pnet_rand=True``
so torchvision downloads nothing; the trunk is then filled from a torchvision ImageNet state dict
(``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``, keys ``features.{i}.weight|bias``; a
``.safetensors`` with the same keys works too) and the 1x1 "lin" layers from the file the ``lpips``
wheel ships (``lpips/weights/v0.1/{alex,vgg}.pth``) or ``lin_weights``.

The VGG trunk is read by ``vqgan_lc.losses.perceptual.vgg16_trunk_state_dict`` (the training loss's
loader); the AlexNet trunk by ``alexnet_trunk_state_dict`` below.

Input conventions (``LPIPSConvention``):

``"lpips"``     (default) the metric as its authors define it: both images in [-1, 1], the
                reconstruction clamped to [-1, 1] first.
``"official"``  what VQGAN-LC's ``eval_reconstruction.py`` computes: ``pyiqa.create_metric('lpips')``
                (AlexNet) called on [-1, 1] tensors and an *unclamped* reconstruction. pyiqa's LPIPS
                defaults to ``normalize=True`` (it expects [0, 1] and applies ``2x - 1``), so the
                network sees images in [-3, 1]. Use it only to compare with the paper's numbers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import CheckpointError, MissingWeightsError

LPIPSNet = Literal["alex", "vgg"]
LPIPSConvention = Literal["lpips", "official"]
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")

# torchvision alexnet().features index ranges of lpips' slice1..slice5 (up to relu1 .. relu5).
ALEX_SLICES: tuple[tuple[int, int], ...] = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
ALEX_CONV_INDICES: tuple[int, ...] = (0, 3, 6, 8, 10)


def default_lin_weights(net: LPIPSNet) -> Path:
    """The LPIPS v0.1 lin-layer weights for ``net`` shipped inside the ``lpips`` package."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def alexnet_trunk_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision AlexNet state dict and rename its conv weights to lpips' ``slice{s}.{i}.*`` keys.

    The classifier is ignored; a features-only dict (``{"0.weight": ...}``) is accepted.
    """
    from ..codebook.features import load_weights_file
    from ..losses.perceptual import lpips_trunk_state_dict

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"AlexNet weights file {path} does not exist; pass a local torchvision alexnet-owt-7be5be79.pth "
            "with --lpips-alex-weights"
        )
    state = load_weights_file(path, "--lpips-alex-weights")
    return lpips_trunk_state_dict(state, ALEX_CONV_INDICES, ALEX_SLICES, source=path, arch="AlexNet",
                                  example="alexnet-owt-7be5be79.pth")


def _trunk_state_dict(net: LPIPSNet, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if net == "alex":
        return alexnet_trunk_state_dict(path)
    from ..losses.perceptual import vgg16_trunk_state_dict

    if not Path(path).is_file():
        raise MissingWeightsError(
            f"VGG16 weights file {path} does not exist; pass a local torchvision vgg16-397923af.pth with --lpips-vgg-weights"
        )
    return vgg16_trunk_state_dict(path)


class LPIPSMetric(nn.Module):
    """LPIPS v0.1 distance per image pair: ``(B, 3, H, W)`` images in [-1, 1] -> ``(B,)`` (>= 0, lower is closer).

    Args:
        net: ``"alex"`` (the official protocol's LPIPS) or ``"vgg"``.
        trunk_weights: local torchvision ImageNet state dict of that network.
        lin_weights: local LPIPS lin-layer file; default: the one inside the ``lpips`` package.
        convention: see the module docstring; ``"lpips"`` clamps the reconstruction, ``"official"``
            reproduces VQGAN-LC's pyiqa call (no clamp, ``2x - 1`` on [-1, 1] inputs).
    """

    def __init__(
        self,
        net: LPIPSNet,
        trunk_weights: str | os.PathLike,
        lin_weights: str | os.PathLike | None = None,
        *,
        convention: LPIPSConvention = "lpips",
    ) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {LPIPS_NETS}, got {net!r}")
        if convention not in ("lpips", "official"):
            raise ValueError(f"convention must be 'lpips' or 'official', got {convention!r}")
        import lpips

        self.net_name = net
        self.convention = convention
        trunk = _trunk_state_dict(net, trunk_weights)
        lin = Path(lin_weights) if lin_weights is not None else default_lin_weights(net)
        if not lin.is_file():
            raise MissingWeightsError(f"LPIPS lin-layer weights {lin} do not exist")
        lin_state = _read_lin(lin)
        with warnings.catch_warnings():
            # lpips calls torchvision's alexnet/vgg16(pretrained=False), which warns about the argument.
            warnings.simplefilter("ignore", UserWarning)
            # pretrained=False: the lin layers are loaded below (weights_only); pnet_rand: no trunk download.
            self.lpips = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
        own_lin = {k: v for k, v in self.lpips.state_dict().items() if k.startswith("lin") and k[3].isdigit()}
        if set(own_lin) != set(lin_state) or any(own_lin[k].shape != lin_state[k].shape for k in own_lin):
            raise CheckpointError(f"{lin} is not an LPIPS v0.1 {net} lin-layer file (needs {sorted(own_lin)})")
        self.lpips.load_state_dict(lin_state, strict=False)
        own = self.lpips.net.state_dict()
        bad = sorted(set(own) ^ set(trunk)) + [k for k in own if k in trunk and own[k].shape != trunk[k].shape]
        if bad:
            raise CheckpointError(f"{trunk_weights}: does not fit the lpips {net} trunk ({', '.join(bad[:3])})")
        self.lpips.net.load_state_dict(trunk, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSMetric:  # noqa: ARG002 - a metric: always eval (no lin dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distances between ``reference`` and ``reconstruction``, both ``(B, 3, H, W)`` around [-1, 1]."""
        if self.convention == "lpips":
            reference, reconstruction = reference.clamp(-1, 1), reconstruction.clamp(-1, 1)
            normalize = False
        else:
            normalize = True  # pyiqa's default, applied to [-1, 1] tensors as the official script does
        d = self.lpips(reference.float(), reconstruction.float(), normalize=normalize)
        return d.reshape(reference.shape[0]).double()


def _read_lin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        raise CheckpointError(f"{path} is not a readable LPIPS lin-layer file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if k.startswith("lin") and k[3:4].isdigit()}


__all__ = [
    "LPIPSConvention",
    "LPIPSMetric",
    "LPIPSNet",
    "LPIPS_NETS",
    "alexnet_trunk_state_dict",
    "default_lin_weights",
]
