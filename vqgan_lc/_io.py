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
  visible. Temporary names are ``.NAME.tmp-PID`` (``TMP_GLOB`` finds leftovers). The file gets the mode
  ``0o666 & ~umask`` (safetensors alone would leave it 0600), and safetensors headers are written in a fixed
  order, so identical runs give byte-identical files.
* ``prepare_output_dir`` and ``OutputLock``: the one guard of every command that writes a folder: a non-empty
  folder that holds files of another kind (or of another run) is refused unless ``--overwrite``, only the
  command's own temporary names are swept, and an advisory lock (``fcntl.flock`` on ``.vqgan-lc.lock``
  inside the folder) stops a second run on the same output at once.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import (
    CheckpointError,
    DeviceError,
    FormatVersionError,
    MissingWeightsError,
    OutputExistsError,
    OutputLockedError,
    VQGANLCError,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
"""The two files of a weights directory (``save_weights_dir`` / ``load_weights_dir``)."""
WEIGHTS_DIR_NAMES = (r"config\.json", r"model\.safetensors")
"""``prepare_output_dir``'s own names of a weights directory."""

TMP_GLOB = ".*.tmp-*"
"""Glob of the temporary files ``atomic_path`` leaves behind when a write is interrupted (of any name: a
writer sweeps only its own names, ``tmp_pattern``)."""

WEIGHTS_SHA256_KEY = "weights_sha256"
"""The ``config.json`` key holding the sha256 of ``model.safetensors`` (written by ``save_weights_dir``, checked
by ``load_weights_dir``; directories written before it existed lack it and load unchecked)."""

LOCK_NAME = ".vqgan-lc.lock"
"""The advisory lock file ``OutputLock`` keeps inside an output folder while a run writes to it (removed when
it ends; a killed run leaves it, and the next run takes it over: a flock dies with its process)."""


def tmp_pattern(name_glob: str) -> str:
    """Glob of ``atomic_path``'s temporary names for targets matching ``name_glob`` (``"shard-*.npy"`` ->
    ``".shard-*.npy.tmp-*"``)."""
    return f".{name_glob}.tmp-*"


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
    recorded = meta.get(WEIGHTS_SHA256_KEY)
    if recorded is not None and sha256_file(w_path) != recorded:
        raise CheckpointError(f"{w_path} is corrupt or truncated (its sha256 differs from the one {CONFIG_NAME} "
                              "records); re-download or re-export it")
    check_device(device)
    try:
        state = load_file(str(w_path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{w_path} is corrupt or truncated ({e}); re-download or re-export it") from e
    return meta, config, state, w_path


def check_device(device: Any, *, flag: str | None = None) -> None:
    """Raise ``DeviceError`` (one sentence) when ``device`` (``"cuda"``, ``"cuda:1"``, ``torch.device``, None =
    CPU) is not a usable torch device on this machine, instead of letting a later load fail with a message
    that blames the file. ``flag`` (e.g. ``"--device"``) names the CLI option the value came from."""
    import torch

    if device is None:
        return
    what = f"{flag} {device}" if flag else f"device {str(device)!r}"
    fix = f"use {flag} cpu" if flag else "pass map_location='cpu'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(f"{what} is not a torch device; {fix} or e.g. 'cuda'") from e
    if dev.type in ("cpu", "meta"):
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"{what} is unavailable: this machine has no usable CUDA GPU; {fix}")
        if dev.index is not None and dev.index >= n:
            have = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
            raise DeviceError(f"{what} is unavailable: this machine has {n} CUDA GPU{'s' if n > 1 else ''} ({have}); "
                              "pick one of them or cpu")
        return
    backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise DeviceError(f"{what} is unavailable: torch has no usable {dev.type} backend on this machine; {fix}")


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
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates 0600; the visible file follows the umask
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
                            metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` (and string ``metadata``) as a safetensors file through ``atomic_path``; returns its
    sha256.

    The header is rewritten in a fixed order (metadata keys sorted, tensors by offset): safetensors itself
    serialises the metadata from a hash map, so two identical saves could differ byte for byte.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    ordered: dict[str, Any] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    h = hashlib.sha256()
    data = memoryview(blob)[8 + n :]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in (struct.pack("<Q", len(text)), text, data):
            f.write(part)
            h.update(part)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc`` says it (changing it, even briefly, is
    not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):  # pragma: no cover - no /proc (macOS)
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def save_weights_dir(directory: str | os.PathLike, meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write a weights directory: ``state`` to ``model.safetensors`` (with ``meta``'s format and version as
    string metadata) and ``meta`` plus the weights file's sha256 (``weights_sha256``) to ``config.json``, both
    atomically. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tags = {"format": str(meta["format"]), "format_version": str(meta["format_version"])}
    digest = atomic_save_safetensors(directory / WEIGHTS_NAME, state, tags)
    atomic_write_json(directory / CONFIG_NAME, {**meta, WEIGHTS_SHA256_KEY: digest})
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


# ----------------------------------------------------------------------------------------- output folders
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _make_output_dir(out: Path, option: str) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{option} {out} is a file, not a folder; pass a folder path (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"cannot create the folder {out} ({e.strerror or e}); choose another {option}") from e


class OutputLock:
    """An advisory lock on an output folder: ``fcntl.flock`` (exclusive, non-blocking) on ``LOCK_NAME``
    inside it, held until ``release`` (or the process ends). A second run on the same folder raises
    ``OutputLockedError`` at once. ``release`` removes the file while still holding the lock, and
    ``acquire`` checks that the file it locked is still the one at the path, so removal never lets two
    runs in. Where ``fcntl`` does not exist (Windows) nothing is locked."""

    def __init__(self, directory: str | os.PathLike, *, option: str = "--out", path: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory)
        self.option = option
        self.path = Path(path) if path is not None else self.directory / LOCK_NAME
        """The lock file: ``LOCK_NAME`` inside the folder, or ``path`` (beside a folder that is replaced whole)."""
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock (creating the folder if needed); ``OutputLockedError`` when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        path = self.path
        _make_output_dir(path.parent, self.option)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                try:
                    holder = f" (pid {int(path.read_text().strip())})"
                except (OSError, ValueError):
                    holder = ""
                raise OutputLockedError(
                    f"another vqgan-lc run{holder} is writing to {self.directory}; wait for it to finish or choose "
                    f"another {self.option}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and flock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a waiting run that opened the old file notices the
        removal and locks a new one)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _own_matcher(own_names: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    names = "|".join(f"(?:{n})" for n in own_names)
    return re.compile(f"(?:{names})"), re.compile(rf"\.(?:{names})\.tmp-(\d+)")


def prepare_output_dir(
    path: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool,
    own_names: Sequence[str],
    resumable: bool = False,
    lock: bool | OutputLock = False,
    option: str = "--out",
    create: bool = True,
) -> OutputLock:
    """Make the folder ``path`` ready for a command that writes a ``kind`` (e.g. ``"token directory"``) into
    it; returns the folder's ``OutputLock`` (held when ``lock`` is true, or acquired when it is an ``OutputLock``
    the caller releases; release it when the command is done). A held lock raises ``OutputLockedError``.

    ``own_names``: regular expressions (matched against whole names) of the files and folders the command
    writes; ``atomic_path``'s temporaries of those names (``.NAME.tmp-PID``) count as its own too. Then:

    * a missing or empty folder is created;
    * a folder that holds other names is refused (``OutputExistsError``: "X is not empty and is not a KIND
      ...") unless ``overwrite``; with ``overwrite`` the other files are kept and the command writes beside
      them;
    * a folder that holds this kind's files of an earlier run is refused unless ``resumable`` (the caller
      then checks that the run is its own, e.g. ``encode.json``) or ``overwrite``; with ``overwrite``
      those files (and only those) are removed first;
    * the command's own temporaries are removed when their process is gone (or always under ``lock``):
      nothing of another name is ever deleted.

    ``option`` names the flag of the folder in the sentences. ``create=False`` leaves a missing folder
    missing (for a command that creates it once its work succeeded; nothing is locked then).
    """
    out = Path(path)
    if not create and not out.exists():
        return lock if isinstance(lock, OutputLock) else OutputLock(out, option=option)
    _make_output_dir(out, option)
    own, own_tmp = _own_matcher(own_names)
    a_kind = f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"

    def scan() -> tuple[list[Path], list[tuple[Path, int]]]:
        """This kind's files and temporaries in ``out``; refuses what is not allowed (see above)."""
        foreign: list[str] = []
        mine: list[Path] = []
        temps: list[tuple[Path, int]] = []
        for p in sorted(out.iterdir()):
            if p.name == LOCK_NAME:
                continue
            if (m := own_tmp.fullmatch(p.name)) is not None:
                temps.append((p, int(m.group(1))))
            elif own.fullmatch(p.name):
                mine.append(p)
            else:
                foreign.append(p.name)
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputExistsError(
                f"{out} is not empty and is not {a_kind} (it holds {shown}); choose an empty or new {option}, or "
                "pass --overwrite to write into it (files of other names are kept)"
            )
        if mine and not resumable and not overwrite:
            shown = ", ".join(p.name for p in mine[:3]) + (f" and {len(mine) - 3} more" if len(mine) > 3 else "")
            raise OutputExistsError(
                f"{out} already holds {a_kind} from an earlier run ({shown}); choose another {option} or pass "
                "--overwrite to replace it"
            )
        return mine, temps

    scan()  # refuse before the lock file is created: a refused folder is left exactly as it was
    held = lock if isinstance(lock, OutputLock) else OutputLock(out, option=option)
    if lock is not False and not held.held:
        held.acquire()
    try:
        mine, temps = scan()  # again under the lock: another run may have written meanwhile
        if overwrite and mine:
            log.info("--overwrite: removing the %d files of the earlier %s in %s", len(mine), kind, out)
            for p in mine:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        for p, pid in temps:
            if held.held or pid == os.getpid() or not _pid_alive(pid):
                p.unlink(missing_ok=True)
    except BaseException:
        if held is not lock:
            held.release()
        raise
    return held


__all__ = [
    "CONFIG_NAME",
    "LOCK_NAME",
    "TMP_GLOB",
    "WEIGHTS_SHA256_KEY",
    "WEIGHTS_DIR_NAMES",
    "WEIGHTS_NAME",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_text",
    "OutputLock",
    "check_device",
    "check_format",
    "current_umask",
    "fsync_dir",
    "is_torchscript",
    "load_state_dict_strict",
    "load_weights_dir",
    "load_weights_file",
    "prepare_output_dir",
    "read_format_json",
    "save_weights_dir",
    "sha256_file",
    "state_dict_mismatch",
    "state_dict_sha256",
    "tmp_pattern",
]
