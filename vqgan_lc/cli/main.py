"""The ``vqgan-lc`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
subcommand named on the command line is imported (to add its arguments, then to run it), and this module
imports nothing heavy, so ``vqgan-lc --help`` and ``vqgan-lc --version`` never import torch.

Output: what a command produced (its result line, tables) goes to stdout; progress and diagnostics are
log records on stderr. Only the ``vqgan_lc`` logger is set up here (INFO, DEBUG with ``-v``); other
libraries' records (faiss's loader, Lightning's "GPU available" lines) are shown from WARNING up, or
from INFO up with ``-v``. A :class:`~vqgan_lc.errors.VQGANLCError` becomes one line on stderr and exit
status 1; a bad flag value is a usage error (one sentence, exit status 2) from argparse.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .._version import __version__
from ..errors import VQGANLCError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "turn an official VQGAN-LC or MAGE VQGAN checkpoint into a model directory"),
    "encode": ("encode", "encode an image folder into a token directory (resumable, sharded, multi-device)"),
    "decode": ("decode", "decode a token directory back to PNG images"),
    "export-tokens": ("export_tokens", "export a token directory to LlamaGen .npy, a flat memmap, Parquet or a HF dataset"),
    "info": ("info", "describe a model, GPT or DiGIT directory, token directory, feature store or codebook file"),
    "build-codebook": ("build_codebook", "extract frozen features and cluster them into a codebook"),
    "evaluate": ("evaluate", "reconstruction metrics, codebook utilization and throughput over a split"),
    "train": ("train", "train or fine-tune a tokenizer with Lightning (--config tiny_cpu, ...)"),
    "export": ("export", "turn a training checkpoint (.ckpt of vqgan-lc train) into a model directory"),
    "train-gpt": ("train_gpt", "train the autoregressive GPT prior on token directories (Lightning)"),
    "sample": ("sample", "sample images: GPT (+ DiGIT stage 2) -> VQGAN-LC decoder -> PNGs"),
    "linear-probe": ("linear_probe", "linear-probe accuracy of a GPT's hidden states on a labelled token directory"),
    "demo": ("demo", "the end-to-end CPU demo: codebook, training, encode, decode, evaluate, report"),
    "evaluate-samples": ("evaluate_samples", "FID and Inception Score of generated samples (torch-fidelity)"),
}

# Subcommands that parse their own arguments (LightningCLI; train-gpt's --SECTION.FIELD overrides):
# everything after the name reaches them untouched as ``args.rest``.
OWN_PARSER = {"train", "train-gpt"}

PACKAGE_LOGGER = "vqgan_lc"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (global options come first and take no value), if any."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in SUBCOMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``vqgan-lc`` parser. With ``argv``, only the subcommand it names gets its arguments (the
    others are listed by name and help only), so building it imports at most one subcommand module;
    without, every subcommand is complete."""
    selected = _command_in(argv) if argv is not None else None
    parser = argparse.ArgumentParser(prog="vqgan-lc", description="Large-codebook image tokenizers (VQGAN-LC).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging from vqgan_lc, and INFO lines from other libraries (faiss, Lightning)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name not in OWN_PARSER:
            p.add_argument("--offline", action="store_true",
                           help="use only local files and caches (as HF_HUB_OFFLINE=1); never touch the network")
        if argv is None or name == selected:
            _load(module).add_arguments(p)
    return parser


def _load(module: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{module}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so a redirected or captured stderr works)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


class _OtherLibraries(logging.Filter):
    """Passes the records of loggers outside ``vqgan_lc`` (those have their own handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == PACKAGE_LOGGER or record.name.startswith(PACKAGE_LOGGER + "."))


def configure_logging(verbose: bool = False) -> None:
    """Set up the CLI's logging (idempotent: a second call replaces the first's handlers).

    The ``vqgan_lc`` logger gets a stderr handler at INFO (DEBUG when ``verbose``). Other libraries keep
    Python's default of WARNING and up: a root handler at WARNING (INFO when ``verbose``) that skips
    ``vqgan_lc`` records, so none is printed twice. Lightning adds its own INFO handler only when the
    root logger has none, so with this handler its "GPU available" lines are quiet by default too.
    """
    fmt = logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S")
    pkg, root = logging.getLogger(PACKAGE_LOGGER), logging.getLogger()
    unconfigure_logging()
    ours = _StderrHandler()
    ours.setFormatter(fmt)
    ours._vqgan_lc_cli = True  # type: ignore[attr-defined]
    pkg.addHandler(ours)
    pkg.setLevel(logging.DEBUG if verbose else logging.INFO)
    others = _StderrHandler()
    others.setFormatter(fmt)
    others.setLevel(logging.INFO if verbose else logging.WARNING)
    others.addFilter(_OtherLibraries())
    others._vqgan_lc_cli = True  # type: ignore[attr-defined]
    root.addHandler(others)
    if verbose and root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        # already imported (by an earlier command in this process) with its own INFO handler: quiet it
        lg = logging.getLogger(name)
        if not verbose and lg.level == logging.INFO and any(not getattr(h, "_vqgan_lc_cli", False)
                                                            for h in lg.handlers):
            lg.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    rest: list[str] | None = None
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i < len(argv) and argv[i] in OWN_PARSER:
        argv, rest = argv[: i + 1], argv[i + 1 :]
    args = parser.parse_args(argv)
    if rest is not None:
        args.rest = rest
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    if getattr(args, "offline", False):
        from ..hub import enable_offline

        enable_offline()
    try:
        return int(_load(args._module).run(args) or 0)
    except VQGANLCError as e:
        print(f"vqgan-lc {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        print(f"vqgan-lc {args.command}: error: {os_error_sentence(e)}", file=sys.stderr)
        return 1
    finally:
        unconfigure_logging()  # main() called from Python (tests, the demo) leaves logging as it found it


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (from a wrapped library message) become spaces."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _shown(path: str | bytes | os.PathLike | None) -> str | None:
    """A path as the user wrote it, with a temporary ``.NAME.tmp-PID`` of ``atomic_path`` shown as ``NAME``."""
    if path is None:
        return None
    text = os.fsdecode(path)
    head, name = os.path.split(text)
    if name.startswith(".") and ".tmp-" in name:
        text = os.path.join(head, name[1:].rsplit(".tmp-", 1)[0])
    return text


def _folder_of(path: str | None) -> str:
    """The folder that holds ``path`` (the path itself when it is a folder), for "no space left on DIR"."""
    if path is None:
        return "the output device"
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def os_error_sentence(e: OSError) -> str:
    """One sentence for an ``OSError`` that says what is wrong and what to do, by its errno.

    ``ENOSPC`` -> "no space left on DIR", ``EROFS`` -> "DIR is read-only", ``EEXIST``/``ENOTDIR`` on a
    file -> "OUT is a file", ``EISDIR`` -> "OUT is a folder", ``EACCES`` -> "permission denied", ``ENOENT``
    -> "does not exist"; anything else keeps the system's reason next to the path.
    """
    path, other = _shown(e.filename), _shown(e.filename2)
    target = other if other is not None and e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST) else path
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if code == errno.ENOSPC else "the disk quota is used up"
        return (f"{what} on {_folder_of(target)}; free some space or write to another folder, then rerun the "
                "same command (finished parts are kept)")
    if code == errno.EROFS:
        return f"{_folder_of(target)} is read-only; choose a writable output folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {target}; choose a folder you can write to, or fix its permissions"
    if code in (errno.EEXIST, errno.ENOTDIR) and target is not None:
        where = target
        while where and not os.path.exists(where):  # ENOTDIR: a component of the path is a file
            where = os.path.dirname(where)
        if where and os.path.isfile(where):
            return f"{where} is a file, not a folder; remove it or choose another output path"
        return f"{target} already exists; remove it or choose another output path"
    if code == errno.EISDIR and target is not None:
        return f"{target} is a folder, not a file; give a file path (e.g. {os.path.join(target, 'NAME')})"
    if code == errno.ENOENT and target is not None:
        return f"{target} does not exist; check the path"
    if code == errno.ENAMETOOLONG and target is not None:
        return f"the file name {target!r} is too long for this file system; use a shorter name"
    reason = one_line(e.strerror or str(e) or type(e).__name__)
    if target is not None:
        return f"{target}: {reason}; check the path and the disk, then rerun"
    return f"{reason} (an operating-system error); check the paths and the disk, then rerun"


def unconfigure_logging() -> None:
    """Remove the handlers :func:`configure_logging` added."""
    for lg in (logging.getLogger(PACKAGE_LOGGER), logging.getLogger()):
        for h in [h for h in lg.handlers if getattr(h, "_vqgan_lc_cli", False)]:
            lg.removeHandler(h)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
