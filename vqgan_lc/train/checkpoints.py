"""Checks of a Lightning training checkpoint before a resume (``vqgan-lc train --ckpt-path``, ``train-gpt --resume``).

Lightning itself warns and starts from step 0 when ``ckpt_path="last"`` finds nothing, and raises raw
errors for a missing or damaged file; here each case is one sentence. Files are read with
``torch.load(weights_only=True)``, as Lightning reads local checkpoints: no arbitrary pickle runs.
"""

from __future__ import annotations

from pathlib import Path

from .._io import load_failure_reason
from ..errors import CheckpointError


def check_lightning_checkpoint(path: Path, option: str = "--ckpt-path") -> None:
    """Raise :class:`~vqgan_lc.errors.CheckpointError` unless ``path`` is a readable training checkpoint."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"{option} {path}: no such file; give a .ckpt written by vqgan-lc train or train-gpt "
                              "(e.g. .../checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many unrelated types for a bad file (truncated zip, refused pickle, not a torch file); each becomes the one sentence
        reason = load_failure_reason(e)
        raise CheckpointError(f"{option} {path} is not a readable Lightning checkpoint ({reason[:200]}); "
                              "give an intact .ckpt written by vqgan-lc train or train-gpt") from None
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{option} {path} is not a full training checkpoint (no {', '.join(missing)}); "
                              "resume from a .ckpt written by vqgan-lc train or train-gpt, or fine-tune a model directory "
                              "with --init-from")

