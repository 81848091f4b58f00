"""The one LPIPS builder of the package, for the training loss and the evaluation metric alike.

``build_lpips(net, trunk_weights, lin_weights)`` returns the ``lpips`` package's ``LPIPS(net=...,
version="0.1")`` (taming's LPIPS for ``net="vgg"``: VGG16 features sliced at relu1_2/2_2/3_3/4_3/5_3,
input shift/scale, channel-normalised features, squared differences, 1x1 "lin" layers, spatial mean,
summed over the five layers), frozen, in eval mode, every weight read from a local file:

- the trunk from a torchvision ImageNet state dict (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``;
  keys ``features.{i}.weight|bias``; a features-only dict ``{i}.weight`` or a ``.safetensors`` with the
  same keys works too), renamed to lpips' ``slice{s}.{i}.*`` keys;
- the lin layers from ``lpips/weights/v0.1/{net}.pth``, which the ``lpips`` wheel ships (the VGG file
  is taming's ``vgg.pth``, md5 ``d507d7349b931f0638a25a48a722f98a``), or from ``lin_weights``.

The network is built with ``pnet_rand=True`` and ``pretrained=False`` and filled from those files (read
with ``weights_only`` loading, never unrestricted pickle); a trunk named by its standard name is taken from
the torch hub cache, where torchvision and lpips keep it, and fetched there only when named.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .._io import load_weights_file
from ..errors import CheckpointError, MissingWeightsError

LPIPSNet = Literal["alex", "vgg"]
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")

# torchvision vgg16().features index ranges of lpips' slice1..slice5 (up to relu1_2, relu2_2, ...).
VGG_SLICES: tuple[tuple[int, int], ...] = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# torchvision alexnet().features index ranges of lpips' slice1..slice5 (up to relu1 .. relu5).
ALEX_SLICES: tuple[tuple[int, int], ...] = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
ALEX_CONV_INDICES: tuple[int, ...] = (0, 3, 6, 8, 10)

_TRUNKS: dict[str, tuple[str, str, tuple[int, ...], tuple[tuple[int, int], ...]]] = {
    # net: (architecture name, the torchvision file to use, conv indices, slices)
    "vgg": ("VGG16", "vgg16-397923af.pth", VGG_CONV_INDICES, VGG_SLICES),
    "alex": ("AlexNet", "alexnet-owt-7be5be79.pth", ALEX_CONV_INDICES, ALEX_SLICES),
}


def default_lin_weights(net: LPIPSNet = "vgg") -> Path:
    """The LPIPS v0.1 lin-layer weights for ``net`` shipped inside the ``lpips`` package."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def lpips_trunk_state_dict(
    state: dict[str, torch.Tensor],
    conv_indices: tuple[int, ...],
    slices: tuple[tuple[int, int], ...],
    *,
    source: str | os.PathLike,
    arch: str,
    example: str,
) -> dict[str, torch.Tensor]:
    """Rename the conv weights ``features.{i}.*`` of a torchvision ``arch`` state dict (or a features-only
    dict ``{i}.*``) to lpips' ``slice{s}.{i}.*`` keys, ``slices`` being the ``features`` index range of each
    lpips slice. A missing conv weight raises ``CheckpointError`` naming ``source`` and an ``example`` file."""
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:  # a features-only state dict: {"0.weight": ...}
        feats = {k: v for k, v in state.items() if k.split(".", 1)[0].isdigit()}
    out: dict[str, torch.Tensor] = {}
    missing = []
    for i in conv_indices:
        s = next(n for n, (lo, hi) in enumerate(slices, 1) if lo <= i < hi)
        for p in ("weight", "bias"):
            if f"{i}.{p}" not in feats:
                missing.append(f"features.{i}.{p}")
            else:
                out[f"slice{s}.{i}.{p}"] = feats[f"{i}.{p}"]
    if missing:
        raise CheckpointError(
            f"{source} is not a torchvision {arch} state dict (missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); use e.g. {example}"
        )
    return out


def trunk_state_dict(net: LPIPSNet, path: str | os.PathLike, option: str | None = None) -> dict[str, torch.Tensor]:
    """Read a torchvision ``net`` (``"vgg"``: VGG16, ``"alex"``: AlexNet) state dict and rename its conv
    weights to lpips' ``slice{s}.{i}.*`` keys; the classifier is ignored. ``option`` names the flag that
    passes the file in the error for a missing one."""
    if net not in _TRUNKS:
        raise CheckpointError(f"unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_NETS)}")
    arch, example, conv_indices, slices = _TRUNKS[net]
    path = Path(path)
    if not path.is_file():
        with_option = f" with {option}" if option else ""
        raise MissingWeightsError(
            f"{arch} weights file {path} does not exist; pass a local torchvision {example}{with_option}"
        )
    state = load_weights_file(path, option or "--weights")
    return lpips_trunk_state_dict(state, conv_indices, slices, source=path, arch=arch, example=example)


def vgg16_trunk_state_dict(path: str | os.PathLike, option: str | None = None) -> dict[str, torch.Tensor]:
    """``trunk_state_dict("vgg", path)``: a torchvision VGG16 state dict in lpips' ``slice{s}.{i}.*`` keys."""
    return trunk_state_dict("vgg", path, option)


def alexnet_trunk_state_dict(path: str | os.PathLike, option: str | None = None) -> dict[str, torch.Tensor]:
    """``trunk_state_dict("alex", path)``: a torchvision AlexNet state dict in lpips' ``slice{s}.{i}.*`` keys."""
    return trunk_state_dict("alex", path, option)


def build_lpips(
    net: LPIPSNet,
    trunk_weights: str | os.PathLike | None,
    lin_weights: str | os.PathLike | None = None,
    *,
    trunk_option: str | None = None,
) -> nn.Module:
    """``lpips.LPIPS(net=net, version="0.1")`` filled from local files, frozen and in eval mode.

    Args:
        net: ``"vgg"`` (the training loss, taming's) or ``"alex"`` (the official evaluation's).
        trunk_weights: the torchvision ImageNet state dict of ``net``: a path, or a standard name
            (``"torchvision"``, ``vgg16-397923af.pth``, its URL) read from -- or, unless offline, fetched
            into -- the torch hub cache (``vqgan_lc.named_weights``); ``None`` keeps a randomly initialised
            trunk (tests only: the distance is then not perceptual).
        lin_weights: the LPIPS lin-layer file; default: the one inside the ``lpips`` package.
        trunk_option: the flag that passes ``trunk_weights``, named in the error for a missing file.
    """
    try:
        import lpips
    except ImportError as e:  # pragma: no cover - lpips is in the [train] and [eval] extras
        raise ImportError("LPIPS needs the lpips package: pip install 'vqgan-lc[train]' or 'vqgan-lc[eval]'") from e
    if net not in LPIPS_NETS:
        raise CheckpointError(f"unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_NETS)}")
    if trunk_weights is not None:  # a path, or a standard name from (or fetched into) the torch hub cache
        from ..named_weights import resolve_checkpoint

        trunk_weights = resolve_checkpoint(trunk_weights, "lpips-alex" if net == "alex" else "lpips-vgg",
                                           option=trunk_option)
    trunk = trunk_state_dict(net, trunk_weights, trunk_option) if trunk_weights is not None else None
    lin = Path(lin_weights) if lin_weights is not None else default_lin_weights(net)
    if not lin.is_file():
        raise MissingWeightsError(f"LPIPS lin-layer weights {lin} do not exist")
    lin_state = {k: v for k, v in load_weights_file(lin).items() if k.startswith("lin") and k[3:4].isdigit()}
    with warnings.catch_warnings():
        # lpips calls torchvision's alexnet/vgg16(pretrained=False), which warns about the argument.
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=False: the lin layers are loaded below; pnet_rand=True: torchvision downloads no trunk.
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    own_lin = {k: v for k, v in model.state_dict().items() if k.startswith("lin") and k[3:4].isdigit()}
    if set(own_lin) != set(lin_state) or any(own_lin[k].shape != lin_state[k].shape for k in own_lin):
        raise CheckpointError(f"{lin} is not an LPIPS v0.1 {net} lin-layer file (needs {sorted(own_lin)})")
    model.load_state_dict(lin_state, strict=False)
    if trunk is not None:
        own = model.net.state_dict()
        bad = sorted(set(own) ^ set(trunk)) + [k for k in own if k in trunk and own[k].shape != trunk[k].shape]
        if bad:
            raise CheckpointError(f"{trunk_weights}: does not fit the lpips {net} trunk ({', '.join(bad[:3])})")
        model.net.load_state_dict(trunk, strict=True)
    return model.requires_grad_(False).eval()


__all__ = [
    "ALEX_CONV_INDICES",
    "ALEX_SLICES",
    "LPIPSNet",
    "LPIPS_NETS",
    "VGG_CONV_INDICES",
    "VGG_SLICES",
    "alexnet_trunk_state_dict",
    "build_lpips",
    "default_lin_weights",
    "lpips_trunk_state_dict",
    "trunk_state_dict",
    "vgg16_trunk_state_dict",
]
