"""File helpers shared by every on-disk format of vqgan_lc.

* ``read_format_json`` / ``check_format``: read a JSON file (``config.json``, a manifest) or a
  metadata dict, check its ``format`` name and ``format_version``, and raise the error a caller
  names with one sentence that says what is wrong and what to do.
* ``atomic_path`` and the ``atomic_write_*`` writers: write to a temporary name next to the target,
  fsync, rename over the target and fsync the directory, so a crash never leaves a partial file
  visible. Temporary names are ``.NAME.tmp-PID`` (``TMP_GLOB`` finds leftovers).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatVersionError, VQGANLCError

TMP_GLOB = ".*.tmp-*"
"""Glob of the temporary files ``atomic_path`` leaves behind when a write is interrupted."""


# ----------------------------------------------------------------------------------------- reading
def check_format(
    meta: Mapping[str, Any],
    path: str | os.PathLike,
    expected_format: str,
    known_versions: int | Collection[int],
    *,
    what: str,
    error: type[VQGANLCError],
    upgrade: str = "Upgrade vqgan-lc to read it.",
) -> int:
    """Check ``meta["format"]`` and ``meta["format_version"]`` of the file ``path``; returns the version.

    A wrong or missing format raises ``error`` ("PATH is not a WHAT (format=..., expected ...)"); an
    unknown version raises ``FormatVersionError`` ("PATH is a WHAT of format_version V; this vqgan-lc
    reads version N. UPGRADE"). ``what`` names the kind of file, e.g. ``"vqgan-lc model config"``.
    """
    known = (known_versions,) if isinstance(known_versions, int) else tuple(known_versions)
    found = meta.get("format")
    if found != expected_format:
        raise error(f"{path} is not a {what} (format={found!r}, expected {expected_format!r})")
    version = meta.get("format_version")
    if version not in known:
        reads = f"version {known[0]}" if len(known) == 1 else f"versions {', '.join(map(str, known))}"
        raise FormatVersionError(f"{path} is a {what} of format_version {version!r}; this vqgan-lc reads {reads}. {upgrade}")
    return int(version)


def read_format_json(
    path: str | os.PathLike,
    expected_format: str,
    known_versions: int | Collection[int],
    *,
    what: str,
    error: type[VQGANLCError],
    missing: str | None = None,
    upgrade: str = "Upgrade vqgan-lc to read it.",
) -> dict[str, Any]:
    """Read the JSON object in ``path`` and check its format and version (``check_format``).

    A missing file raises ``error(missing)`` when ``missing`` is given (else ``error`` with a generic
    sentence); invalid JSON raises ``error``.
    """
    path = Path(path)
    if not path.is_file():
        raise error(missing or f"{path} does not exist: not a {what}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise error(f"{path} is not a {what} (a JSON {type(meta).__name__}, not an object)")
    check_format(meta, path, expected_format, known_versions, what=what, error=error, upgrade=upgrade)
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block has written it, fsync it and rename it
    over ``path`` (then fsync the directory). If the block raises, the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    """``obj`` as sorted-key JSON with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """Save ``array`` as ``.npy`` atomically; returns the file's sha256."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, Any],
                            metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through ``atomic_path``."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename in it survives a crash (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


__all__ = [
    "TMP_GLOB",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_text",
    "check_format",
    "fsync_dir",
    "read_format_json",
    "sha256_file",
]
