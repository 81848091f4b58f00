"""MAGE's VQGAN checkpoint (``vqgan_jax_strongaug.ckpt``, used by MAGE and DiGIT) -> a MAGE model directory.

The release is ``torch.save`` of the model's flat state dict (168 tensors: ``encoder.*``,
``decoder.*``, ``quantize.embedding.weight``; no loss weights). It is read with
``torch.load(weights_only=True)``, so no code in the file can run; a mapping with a
``"state_dict"`` entry is unwrapped as the official loader does. Keys are checked strictly, as the
official loader does. The architecture comes from MAGE's ``vqgan.yaml`` (``model.params``) or is
inferred from the tensor shapes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._io import load_failure_reason, sha256_file, state_dict_mismatch
from .errors import CheckpointError
from .mage import MAGEVQGAN, MAGEConfig

log = logging.getLogger(__name__)

_DDCONFIG_KEYS = ("ch", "ch_mult", "num_res_blocks", "z_channels", "resolution", "in_channels", "out_ch", "dropout")
_TAMING_MARKERS = ("quant_conv.weight", "post_quant_conv.weight", "encoder.mid.attn_1.q.weight",
                   "quantize.codebook", "tok_embeddings.weight")


def load_mage_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict of a MAGE VQGAN checkpoint (unwrapping a ``"state_dict"`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of vqgan_jax_strongaug.ckpt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds
        first = load_failure_reason(e)
        raise CheckpointError(f"{path} cannot be read safely as a MAGE VQGAN checkpoint ({first}); only tensors "
                              "and plain containers are allowed, so pass the release's state-dict file") from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; "
                              "pass MAGE's vqgan_jax_strongaug.ckpt")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a flat state dict: {len(bad)} entries are not named tensors "
                              f"(e.g. {', '.join(bad[:3])}); pass MAGE's vqgan_jax_strongaug.ckpt")
    return dict(obj)


def mage_config_from_params(params: Mapping[str, Any], *, source: str = "the config") -> MAGEConfig:
    """A ``MAGEConfig`` from MAGE's ``model.params`` (``embed_dim``, ``n_embed``, ``ddconfig``).

    ``attn_resolutions`` is accepted and ignored (the model has no attention); ``double_z`` must be false.
    """
    try:
        dd = params["ddconfig"]
        kwargs: dict[str, Any] = {k: dd[k] for k in _DDCONFIG_KEYS if k in dd}
        kwargs["embed_dim"] = int(params["embed_dim"])
        kwargs["n_embed"] = int(params["n_embed"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source} is not a MAGE VQGAN config: it needs model.params.embed_dim, n_embed "
                              f"and ddconfig (missing {e})") from e
    if dd.get("double_z"):
        raise CheckpointError(f"{source} sets double_z=true, which is a KL autoencoder, not MAGE's VQGAN")
    try:
        return MAGEConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} is not a valid MAGE VQGAN config: {e}") from e


def mage_config_from_yaml(path: str | os.PathLike) -> MAGEConfig:
    """The architecture in MAGE's ``config/vqgan.yaml`` (JSON with the same nesting works too)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config {path} does not exist; pass MAGE's config/vqgan.yaml or leave --config out")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); pass MAGE's config/vqgan.yaml") from e
    try:
        params = doc["model"]["params"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a MAGE VQGAN config (it needs model.params); "
                              "pass MAGE's config/vqgan.yaml") from e
    return mage_config_from_params(params, source=str(path))


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        hint = ("it looks like a taming/VQGAN-LC checkpoint: convert it with --format vqgan-lc"
                if any(k in state for k in _TAMING_MARKERS) else "pass MAGE's vqgan_jax_strongaug.ckpt")
        raise CheckpointError(f"{source} is not a MAGE VQGAN checkpoint (no {key}); {hint}")
    return tuple(state[key].shape)


def infer_mage_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256,
                      source: str = "the checkpoint") -> MAGEConfig:
    """The architecture implied by a MAGE state dict's tensor shapes.

    ``resolution`` (the training image size) is not stored in the weights; 256 is the release's.
    Whether every other key fits is checked when the weights are loaded.
    """
    ch, in_channels = _shape(state, "encoder.conv_in.weight", source)[:2]
    n_embed, embed_dim = _shape(state, "quantize.embedding.weight", source)
    z_channels = _shape(state, "encoder.conv_out.weight", source)[0]
    out_ch = _shape(state, "decoder.conv_out.weight", source)[0]
    levels: set[int] = set()
    blocks: set[int] = set()
    for k in state:
        m = re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.", k)
        if m:
            levels.add(int(m.group(1)))
            if m.group(1) == "0":
                blocks.add(int(m.group(2)))
    if not levels or levels != set(range(len(levels))) or blocks != set(range(len(blocks))):
        raise CheckpointError(f"{source} is not a MAGE VQGAN checkpoint: its encoder.down.*.block.* keys do not "
                              "number the levels and blocks 0, 1, ...")
    ch_mult = []
    for i in range(len(levels)):
        width = _shape(state, f"encoder.down.{i}.block.0.conv1.weight", source)[0]
        if width % ch:
            raise CheckpointError(f"{source}: level {i} has {width} channels, not a multiple of ch={ch}; "
                                  "not a MAGE VQGAN checkpoint")
        ch_mult.append(width // ch)
    try:
        return MAGEConfig(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=len(blocks), z_channels=z_channels,
                          embed_dim=embed_dim, n_embed=n_embed, resolution=resolution, in_channels=in_channels,
                          out_ch=out_ch)
    except ValueError as e:
        raise CheckpointError(f"{source} does not describe a valid MAGE VQGAN: {e}") from e


def convert_mage(checkpoint: str | os.PathLike, *, yaml_config: str | os.PathLike | None = None,
                 config: MAGEConfig | None = None, resolution: int | None = None) -> MAGEVQGAN:
    """Build a ``MAGEVQGAN`` holding a MAGE VQGAN checkpoint's weights.

    The architecture is ``config``, or read from ``yaml_config`` (MAGE's ``vqgan.yaml``), or inferred
    from the tensor shapes (give at most one of the first two). ``resolution`` overrides the training
    image size (default: the yaml's, else 256). The weights must fit exactly: a missing, unexpected
    or mis-shaped key raises ``CheckpointError`` naming them.
    """
    if config is not None and yaml_config is not None:
        raise ValueError("give at most one of config and yaml_config")
    state = load_mage_checkpoint(checkpoint)
    source = str(checkpoint)
    origin = f"read from {yaml_config}" if yaml_config is not None else "given" if config is not None else "inferred"
    if config is None and yaml_config is not None:
        config = mage_config_from_yaml(yaml_config)
    if config is None:
        config = infer_mage_config(state, resolution=resolution or 256, source=source)
        log.info("architecture inferred from %s: ch %d, ch_mult %s, %d blocks/level, %d x %d codes", Path(source).name,
                 config.ch, list(config.ch_mult), config.num_res_blocks, config.n_embed, config.embed_dim)
    elif resolution is not None:
        config = config.replace(resolution=resolution)
    with torch.device("meta"):
        shell = MAGEVQGAN(config)
    problem = state_dict_mismatch(shell.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not fit the MAGE VQGAN architecture {origin}: {problem}")
    model = MAGEVQGAN(config, provenance={
        "converted_from": Path(source).name, "checkpoint_sha256": sha256_file(source),
        "config_from": Path(yaml_config).name if yaml_config else "checkpoint shapes"})
    model.load_state_dict_checked({k: v.float() for k, v in state.items()}, source=source)
    return model.eval()


__all__ = ["convert_mage", "infer_mage_config", "load_mage_checkpoint", "mage_config_from_params",
           "mage_config_from_yaml"]
