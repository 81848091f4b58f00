"""LPIPS (VGG16) perceptual loss with every weight taken from a local file; nothing is downloaded.

The network is the ``lpips`` package's ``LPIPS(net="vgg")``, which is taming's LPIPS: VGG16 features
sliced at relu1_2/2_2/3_3/4_3/5_3, shift/scale of the inputs, channel-normalised features, squared
differences, 1x1 "lin" layers, spatial mean, summed over the five layers.

- The VGG16 trunk comes from a torchvision ImageNet state dict (``vgg16-397923af.pth``; keys
  ``features.{i}.weight`` / ``features.{i}.bias``; a features-only dict ``{i}.weight`` is accepted).
- The lin layers come from ``lpips/weights/v0.1/vgg.pth``, which the ``lpips`` wheel ships (the same
  file as taming's ``vgg.pth``, md5 ``d507d7349b931f0638a25a48a722f98a``), or from ``lin_weights``.

The module is frozen and stays in eval mode even when its parent is put in training mode. (The
official VQGAN-LC code registers LPIPS as a submodule of the model, so ``model.train()`` switches
the dropout of its lin layers on during training; here the loss is deterministic.)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, MissingWeightsError

# torchvision vgg16().features index ranges of lpips' slice1..slice5 (up to relu1_2, relu2_2, ...).
VGG_SLICES: tuple[tuple[int, int], ...] = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def default_lin_weights() -> Path:
    """The LPIPS v0.1 VGG lin-layer weights shipped inside the ``lpips`` package."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / "vgg.pth"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def vgg16_trunk_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG16 state dict and rename its conv weights to lpips' ``slice{s}.{i}.*`` keys."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"VGG16 weights file {path} does not exist; pass a local vgg16-397923af.pth")
    return lpips_trunk_state_dict(_read_state_dict(path), VGG_CONV_INDICES, VGG_SLICES, source=path,
                                  arch="VGG16", example="vgg16-397923af.pth")


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


class PerceptualLoss(nn.Module):
    """LPIPS-VGG distance between images ``(B, 3, H, W)`` in [-1, 1]; returns ``(B,)`` (>= 0).

    Args:
        vgg_weights: local torchvision VGG16 ImageNet weights (``vgg16-397923af.pth`` or a
            ``.safetensors`` with the same keys).
        lin_weights: local LPIPS lin-layer weights; default: the file inside the ``lpips`` package.
        random_trunk: keep a randomly initialised VGG trunk instead of loading ``vgg_weights``
            (for tests only; the distance is then not perceptual).
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        *,
        random_trunk: bool = False,
    ) -> None:
        super().__init__()
        if vgg_weights is None and not random_trunk:
            raise MissingWeightsError(
                "the LPIPS perceptual loss needs local VGG16 ImageNet weights (e.g. vgg16-397923af.pth); "
                "nothing is downloaded"
            )
        try:
            import lpips
        except ImportError as e:  # pragma: no cover - lpips is in the [train] extra
            raise ImportError("the perceptual loss needs the lpips package: pip install 'vqgan-lc[train]'") from e
        lin = Path(lin_weights) if lin_weights is not None else default_lin_weights()
        if not lin.is_file():
            raise MissingWeightsError(f"LPIPS lin-layer weights {lin} do not exist")
        lin_state = _read_state_dict(lin)
        expected = {f"lin{k}.model.1.weight" for k in range(5)}
        if not expected <= set(lin_state):
            raise CheckpointError(f"{lin} is not an LPIPS VGG lin-layer file (needs {sorted(expected)})")
        with warnings.catch_warnings():
            # lpips calls torchvision's vgg16(pretrained=False), which warns about the deprecated argument.
            warnings.simplefilter("ignore", UserWarning)
            # pretrained=True loads the lin layers from model_path; pnet_rand=True keeps torchvision
            # from downloading the trunk, which is loaded below from the local file instead.
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, model_path=str(lin), verbose=False)
        if vgg_weights is not None:
            trunk = vgg16_trunk_state_dict(vgg_weights)
            own = self.lpips.net.state_dict()
            bad = [k for k, v in trunk.items() if own[k].shape != v.shape]
            if bad:
                raise CheckpointError(f"{vgg_weights}: VGG16 tensors of the wrong shape: {', '.join(bad[:3])}")
            self.lpips.net.load_state_dict(trunk, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:  # noqa: ARG002 - always eval (no lin dropout)
        return super().train(False)

    def forward(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``(B,)`` LPIPS distances; gradients flow to both inputs."""
        return self.lpips(images.contiguous(), reconstruction.contiguous()).reshape(images.shape[0])
