"""Cheap checks a subcommand runs before its work starts, so a bad ``--out`` or ``--device`` costs no
extraction, k-means or encoding: each raises a :class:`~vqgan_lc.errors.VQGANLCError` with one sentence.

``check_output`` imports nothing heavy; ``check_device`` imports torch (a command that takes
``--device`` imports it anyway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import ConfigError, OutputPathError

OutputKind = Literal["folder", "file"]


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path: str | os.PathLike | None, kind: OutputKind, flag: str = "--out") -> None:
    """Refuse an output ``path`` that cannot be written as a ``kind``, before any work.

    A ``folder`` output must not be a file (nor lie under one); a ``file`` output must not be a folder;
    the nearest existing folder must be writable. ``None`` (the option was not given) passes.
    """
    if path is None:
        return
    p = Path(path)
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputPathError(f"{flag} {p} is a file, not a folder; remove it or choose another {flag}")
    if kind == "file" and p.is_dir():
        raise OutputPathError(f"{flag} {p} is a folder, not a file; give a file path such as {p / 'codebook.safetensors'}")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise OutputPathError(f"{flag} {p} lies under {base}, which is a file, not a folder; choose another {flag}")
    if not os.access(base, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        why = "is read-only" if read_only else "is not writable by this user"
        raise OutputPathError(f"{base} {why}; choose a writable {flag}")


def check_device(device: str | None) -> None:
    """Refuse a torch device this machine does not have (``cuda`` without a GPU, ``cuda:7`` with 2 GPUs,
    ``mps`` off macOS), with one sentence naming what it has. ``None`` (the default device) passes."""
    if device is None:
        return
    import torch

    kind, _, index = device.partition(":")
    if kind in ("cpu", "meta"):
        return
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
        if index and int(index) >= n:
            have = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
            raise ConfigError(f"--device {device}: this machine has {n} CUDA GPU{'s' if n > 1 else ''} ({have}); "
                              "pick one of them")
        return
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
        return
    backend = getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ConfigError(f"--device {device}: no {kind} device is available here; use --device cpu")
