"""Cheap checks a subcommand runs before its work starts, so a bad ``--out`` or ``--device`` costs no
extraction, k-means or encoding: each raises a :class:`~vqgan_lc.errors.VQGANLCError` with one sentence.

``check_output`` imports nothing heavy; ``check_device`` imports torch (a command that takes
``--device`` imports it anyway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import OutputPathError

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
    """Refuse a ``--device`` this machine does not have (``cuda`` without a GPU, ``cuda:7`` with 2 GPUs,
    ``mps`` off macOS), with one sentence naming what it has. ``None`` (the default device) passes."""
    from .._io import check_device as check

    check(device, flag="--device")
