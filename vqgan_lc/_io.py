"""File helpers shared by every on-disk format of vqgan_lc.

* ``read_format_json`` / ``check_format``: read a JSON file (``config.json``, a manifest) or a
  metadata dict, check its ``format`` name and ``format_version``, and raise the error a caller
  names with one sentence that says what is wrong and what to do.
* ``save_weights_dir`` / ``load_weights_dir``: a ``config.json`` + ``model.safetensors`` directory
  (VQGANLC, GPT), and ``state_dict_mismatch`` to name what keeps weights from loading.
* ``load_weights_file`` / ``load_state_dict_strict``: read a third-party weights file (extractors,
  LPIPS, Inception, DiGIT) without unrestricted pickle and load it into a module, or say why it does not
  fit; ``sha256_file`` and ``state_dict_sha256`` identify a weights file and a module's weights.
* ``atomic_path`` and the ``atomic_write_*`` writers: write to a temporary name next to the target,
  fsync, rename over the target and fsync the directory, so a crash never leaves a partial file
  visible. Temporary names are ``.NAME.tmp-PID`` (``TMP_GLOB`` finds leftovers).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import CheckpointError, FormatVersionError, MissingWeightsError, VQGANLCError

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
"""The two files of a weights directory (``save_weights_dir`` / ``load_weights_dir``)."""

TMP_GLOB = ".*.tmp-*"
"""Glob of the temporary files ``atomic_path`` leaves behind when a write is interrupted."""


# ----------------------------------------------------------------------------------------- reading
def load_failure_reason(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` (or safetensors) refused a file, in a few words for a sentence.

    torch's refusal of a pickle advises re-running with ``weights_only=False``, which would run the
    file's code; that advice is dropped and the blocked Python object is named instead.
    """
    text = str(e).strip()
    if "Weights only load failed" in text:
        for line in text.splitlines():
            line = line.strip()
            if "GLOBAL" in line or "global" in line:
                return (f"it holds a pickled Python object, not only tensors ({line.rstrip('.')}); vqgan-lc never "
                        "unpickles such objects, since they can run code")
        return "it holds pickled Python objects, not only tensors; vqgan-lc never unpickles such objects"
    return text.splitlines()[0].strip() if text else type(e).__name__


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
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise error(f"{path}: field 'format_version' has the wrong type ({type(version).__name__} {version!r}, "
                    "expected an integer); the file was edited or damaged: restore it or write it again")
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
    meta = read_json_object(path, error=error, what=what)
    check_format(meta, path, expected_format, known_versions, what=what, error=error, upgrade=upgrade)
    return meta


def read_json_object(path: str | os.PathLike, *, error: type[VQGANLCError], what: str, note: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; invalid JSON or another JSON value raises ``error`` (``note`` is
    appended to the sentence)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}){note}") from e
    if not isinstance(meta, dict):
        raise error(f"{path} is not a {what} (a JSON {type(meta).__name__}, not an object){note}")
    return meta


def load_weights_dir(
    directory: str | os.PathLike,
    expected_format: str,
    known_versions: int | Collection[int],
    parse_config: Callable[[Any], T],
    *,
    what: str,
    hint: str,
    upgrade: str = "Upgrade vqgan-lc to load it.",
    device: str = "cpu",
) -> tuple[dict[str, Any], T, dict[str, Any], Path]:
    """Read a directory written by ``save_weights_dir``: ``(meta, config, state, weights path)``.

    ``config = parse_config(meta["config"])``. Every problem raises ``CheckpointError`` (an unknown
    version ``FormatVersionError``): a missing file (the sentence ends with ``hint``, what to do), a
    config of another format or that ``parse_config`` rejects, a corrupt weights file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{directory} is not a {what} directory (needs {CONFIG_NAME} and {WEIGHTS_NAME}); {hint}")
    meta = read_format_json(cfg_path, expected_format, known_versions, what=f"{what} config", error=CheckpointError,
                            upgrade=upgrade)
    try:
        config = parse_config(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} has an invalid {what} config: {e}") from e
    try:
        state = load_file(str(w_path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{w_path} is corrupt or truncated ({e}); re-download or re-export it") from e
    return meta, config, state, w_path


def state_dict_mismatch(own: Mapping[str, Any], state: Mapping[str, Any], *, show: int = 5) -> str:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``own``: mis-shaped,
    missing and unexpected keys, a few of each by name ("" when it fits)."""
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if shapes:
        parts.append("shape mismatches: " + "; ".join(shapes[:show]) + (" ..." if len(shapes) > show else ""))
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:3])})")
    return "; ".join(parts)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict (sorted by name)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- weights files
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module")
_PREFIXES = ("module.", "backbone.")


def load_weights_file(path: str | os.PathLike, option: str = "--weights") -> dict[str, torch.Tensor]:
    """Read a weights file without unrestricted pickle: ``.safetensors``, a ``torch.save`` state dict
    (``torch.load(weights_only=True)``) or a TorchScript archive (the OpenAI CLIP release).

    Wrappers ``{"state_dict"|"model"|"teacher"|"module": ...}`` and ``module.``/``backbone.`` prefixes are
    removed; entries that are not tensors are dropped. A missing file raises ``MissingWeightsError``
    naming ``option`` (the flag that passes it); an unreadable one ``CheckpointError``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist; pass an existing local file with {option}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif is_torchscript(path):
            # The OpenAI CLIP release is a TorchScript archive; torch.jit.load runs no Python pickle.
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            obj = {k: v for k, v in obj.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors/torch raise many kinds for a bad file
        msg = load_failure_reason(e)
        raise CheckpointError(
            f"{path} is not a readable weights file (.safetensors, a torch.save state dict or a TorchScript "
            f"archive); {type(e).__name__}: {msg}"
        ) from e
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    out = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    if not out:
        raise CheckpointError(f"{path} holds no tensors")
    return out


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str, *, hint: str = "check --model"
) -> None:
    """``module.load_state_dict(state)`` after checking that every key and shape fits; otherwise raise
    ``CheckpointError`` naming ``source``, what does not fit, and ``hint`` (what to do)."""
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not fit the chosen architecture ({problem}); {hint}")
    module.load_state_dict(state)


# ----------------------------------------------------------------------------------------- writing
def reserve_file_space(path: str | os.PathLike) -> None:
    """Allocate every block of the (sparse) file ``path`` now, so that writing through a memmap of it cannot
    hit a full disk (which kills the process with SIGBUS). A full disk raises ``OSError(ENOSPC)`` here;
    where the platform or file system has no ``posix_fallocate`` nothing is reserved."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # unsupported here: nothing to reserve
            return
        raise OSError(e.errno, e.strerror, os.fspath(path)) from e
    finally:
        os.close(fd)


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


def save_weights_dir(directory: str | os.PathLike, meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write a weights directory: ``state`` to ``model.safetensors`` (with ``meta``'s format and version as
    string metadata) and ``meta`` to ``config.json``, both atomically. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tags = {"format": str(meta["format"]), "format_version": str(meta["format_version"])}
    atomic_save_safetensors(directory / WEIGHTS_NAME, state, tags)
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


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
    "CONFIG_NAME",
    "TMP_GLOB",
    "WEIGHTS_NAME",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_text",
    "check_format",
    "fsync_dir",
    "is_torchscript",
    "load_state_dict_strict",
    "load_weights_dir",
    "load_weights_file",
    "read_format_json",
    "save_weights_dir",
    "sha256_file",
    "state_dict_mismatch",
    "state_dict_sha256",
]
