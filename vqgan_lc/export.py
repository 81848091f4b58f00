"""Training checkpoints (``.ckpt`` of ``vqgan-lc train``) -> a vqgan-lc model directory: ``vqgan-lc export``.

Beside ``convert.py`` (official release files -> model directory). Needs no Lightning: the
checkpoint is read with ``torch.load(weights_only=True)`` and only the tokenizer's weights
(``model.*``) and the ``vqgan_lc`` entry that ``VQGANLCModule`` writes into it are used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ._io import load_failure_reason
from .config import ModelConfig
from .errors import CheckpointError
from .model import VQGANLC

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "vqgan_lc"
"""The entry ``VQGANLCModule`` adds to every Lightning checkpoint (gen_step, model config, provenance)."""
CHECKPOINT_VERSION = 1


def export_checkpoint(checkpoint: str | os.PathLike, directory: str | os.PathLike, *,
                      inference_only: bool = False) -> Path:
    """Turn a training checkpoint (``.ckpt`` of ``vqgan-lc train``) into a model directory; returns it."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .ckpt written by vqgan-lc train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad pickle
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {load_failure_reason(e)})") from e
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} was not written by vqgan-lc train (no '{CHECKPOINT_KEY}' entry)")
    model = VQGANLC(ModelConfig.from_dict(meta["model_config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict_checked(state, source=str(path))
    prov = {**meta.get("provenance", {}), "training": {"generator_steps": int(meta["gen_step"]), "checkpoint": path.name}}
    out = model.save_pretrained(directory, inference_only=inference_only, provenance=prov)
    log.info("exported %s (generator step %d) to %s", path, int(meta["gen_step"]), out)
    return out


__all__ = ["CHECKPOINT_KEY", "CHECKPOINT_VERSION", "export_checkpoint"]
