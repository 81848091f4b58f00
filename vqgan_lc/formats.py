"""The table of vqgan-lc's on-disk formats: name -> kind, versions, ``open`` and ``describe``.

A path's format is read from the ``format`` name it records, never guessed from file names:

=====================  ==========================================  ========================  ==========
what                   where the format name is                     format                    kind
=====================  ==========================================  ========================  ==========
model directory        ``config.json``                              ``vqgan-lc-model``        tokenizer
DiGIT tokenizer        ``config.json``                              ``vqgan-lc-digit``        tokenizer
GPT directory          ``config.json``                              ``vqgan-lc-gpt``          prior
token directory        ``manifest.json``                            ``vqgan-lc-tokens``       tokens
feature store          ``manifest.json``                            ``vqgan-lc-features``     features
evaluation report      ``report.json``                              ``vqgan-lc-eval-report``  report
codebook file          safetensors metadata (or the official .pth)  ``vqgan-lc-codebook``     codebook
=====================  ==========================================  ========================  ==========

``load_tokenizer``, ``vqgan-lc info`` and ``open_path`` use it. Each format's module describes its own
files (a ``describe(path) -> Description`` function); the modules are imported only when a path of
their format is opened, so this table costs no torch import.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._io import read_json_object
from .errors import FormatVersionError, UnknownFormatError

FormatKind = Literal["tokenizer", "prior", "tokens", "features", "codebook", "report"]
Record = Literal["config.json", "manifest.json", "report.json", "safetensors"]


@dataclass
class Description:
    """What ``describe`` says about a path: ``fields`` are the sizes shown one per line, ``details``
    the rest (the full config, provenance, ...), shown only as JSON."""

    kind: str
    format: str | None
    version: int | None
    fields: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self, path: Path) -> dict[str, Any]:
        return {"path": str(path), "kind": self.kind, "format": self.format, "format_version": self.version,
                **self.fields, "details": self.details}

    def to_text(self, path: Path) -> str:
        fmt = f"format {self.format}, version {self.version}" if self.format else "official release file"
        lines = [f"{path}: {self.kind} ({fmt})"]
        width = max((len(k) for k in self.fields), default=0) + 1
        lines += [f"  {(k.replace('_', ' ') + ':'):{width + 1}s} {format_value(v)}" for k, v in self.fields.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Format:
    """One on-disk format. ``opener``/``describer`` are ``"module:attribute[.attribute]"`` paths,
    imported on first use."""

    name: str
    kind: FormatKind
    title: str
    versions: tuple[int, ...]
    record: Record
    opener: str
    describer: str

    def _resolve(self, target: str) -> Any:
        module, _, attrs = target.partition(":")
        obj: Any = importlib.import_module(module)
        for a in attrs.split("."):
            obj = getattr(obj, a)
        return obj

    def open(self, path: str | Path) -> Any:
        """The object this path holds (a module in eval mode, a ``TokenFile``, a ``FeatureStore``, ...)."""
        return self._resolve(self.opener)(Path(path))

    def describe(self, path: str | Path) -> Description:
        """A ``Description`` of ``path`` (sizes, config, provenance)."""
        return self._resolve(self.describer)(Path(path))


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("vqgan-lc-model", "tokenizer", "model directory", (1,), "config.json",
           "vqgan_lc.model:VQGANLC.from_pretrained", "vqgan_lc.model:describe"),
    Format("vqgan-lc-digit", "tokenizer", "DiGIT tokenizer directory", (1,), "config.json",
           "vqgan_lc.digit:DiscriminativeTokenizer.from_pretrained", "vqgan_lc.digit:describe"),
    Format("vqgan-lc-mage", "tokenizer", "MAGE VQGAN directory", (1,), "config.json",
           "vqgan_lc.mage:MAGEVQGAN.from_pretrained", "vqgan_lc.mage:describe"),
    Format("vqgan-lc-gpt", "prior", "GPT directory", (1,), "config.json",
           "vqgan_lc.generate.gpt:GPT.from_pretrained", "vqgan_lc.generate.gpt:describe"),
    Format("vqgan-lc-tokens", "tokens", "token directory", (1,), "manifest.json",
           "vqgan_lc.tokens.format:open_tokens", "vqgan_lc.tokens.format:describe"),
    Format("vqgan-lc-features", "features", "feature store", (1,), "manifest.json",
           "vqgan_lc.codebook.store:FeatureStore.open", "vqgan_lc.codebook.store:describe"),
    Format("vqgan-lc-eval-report", "report", "evaluation report", (1,), "report.json",
           "vqgan_lc.metrics.report:read_report", "vqgan_lc.metrics.report:describe"),
    Format("vqgan-lc-codebook", "codebook", "codebook file", (1,), "safetensors",
           "vqgan_lc.codebook.io:load_codebook", "vqgan_lc.codebook.io:describe"),
)}
"""Every format this vqgan-lc reads, by name."""

RECORD_FILES: tuple[Record, ...] = ("config.json", "manifest.json", "report.json")
NONE_OF_THEM = ("a model, MAGE VQGAN, GPT or DiGIT tokenizer directory, a token directory, a feature store, an evaluation report "
                "or a codebook file")


# ----------------------------------------------------------------------------------------- detection
def detect(path: str | Path) -> Format:
    """The format of ``path`` (a directory, its record file, or a codebook file), after checking its version.

    One sentence for each way to fail: ``UnknownFormatError`` for a path of no known format (missing,
    another format name, an unfinished token directory, a weights file inside a directory),
    ``FormatVersionError`` for a known format of a version this vqgan-lc does not read.
    """
    path = Path(path)
    if not path.exists():
        raise UnknownFormatError(f"{path} does not exist.")
    if path.is_file() and path.name in RECORD_FILES:  # `info DIR/config.json` means the directory
        path = path.parent
    if path.is_dir():
        return _detect_dir(path)
    if path.suffix == ".safetensors":
        meta = safetensors_header(path)[0]
        fmt = meta.get("format")
        spec = FORMATS.get(fmt) if isinstance(fmt, str) else None
        if spec is not None and spec.record == "safetensors":
            return _checked(path, "its metadata", fmt, _int_or_none(meta.get("format_version")), (spec.name,))
        if spec is not None:
            raise UnknownFormatError(f"{path} is the weights file of a {spec.title}: pass the directory "
                                     f"{path.parent} instead.")
        raise UnknownFormatError(f"{path} is a safetensors file but none of {NONE_OF_THEM} (its metadata records "
                                 f"format {fmt!r}, a codebook file records 'vqgan-lc-codebook').")
    if path.suffix in (".pth", ".pt", ".bin"):  # the official codebook: a pickled tensor, no format record
        return FORMATS["vqgan-lc-codebook"]
    raise UnknownFormatError(f"{path} is none of {NONE_OF_THEM}; directories are described by passing the "
                             "directory itself.")


def _detect_dir(path: Path) -> Format:
    for record in RECORD_FILES:
        if (path / record).is_file():
            meta = read_json_object(path / record, error=UnknownFormatError, what="format record",
                                    note=f", so {path} is none of {NONE_OF_THEM}.")
            allowed = tuple(f.name for f in FORMATS.values() if f.record == record)
            return _checked(path, record, meta.get("format"), meta.get("format_version"), allowed)
    if (path / "encode.json").is_file():
        raise UnknownFormatError(f"{path} is an unfinished token directory (encode.json but no manifest.json): rerun "
                                 "the same `vqgan-lc encode` command to complete it.")
    raise UnknownFormatError(f"{path} is none of {NONE_OF_THEM}: the directory has neither a config.json nor a "
                             "manifest.json nor a report.json.")


def _checked(path: Path, where: str, fmt: Any, version: Any, allowed: tuple[str, ...]) -> Format:
    if fmt not in allowed:
        raise UnknownFormatError(
            f"{path} is none of {NONE_OF_THEM}: {where} records format {fmt!r}, and this vqgan-lc knows "
            f"{', '.join(allowed)} there."
        )
    spec = FORMATS[fmt]
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise UnknownFormatError(f"{path}: {where} records format_version {version!r}, a {type(version).__name__} "
                                 "where an integer belongs (the wrong type); the file was edited or damaged: "
                                 "restore it or write it again")
    if version not in spec.versions:
        reads = (f"only version {spec.versions[0]}" if len(spec.versions) == 1
                 else f"versions {', '.join(map(str, spec.versions))}")
        raise FormatVersionError(
            f"{path} is a {spec.title} of format version {version!r} ({fmt}), but this vqgan-lc reads {reads}: "
            "upgrade vqgan-lc to read it."
        )
    return spec


def describe(path: str | Path) -> Description:
    """Recognise ``path`` (``detect``) and describe it through its format's module."""
    path = Path(path)
    spec = detect(path)
    target = path.parent if path.is_file() and path.name in RECORD_FILES else path
    return spec.describe(target)


def open_path(path: str | Path) -> Any:
    """Recognise ``path`` (``detect``) and open it with its format's reader."""
    path = Path(path)
    spec = detect(path)
    return spec.open(path.parent if path.is_file() and path.name in RECORD_FILES else path)


# ----------------------------------------------------------------------------------------- helpers for describers
def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def format_value(v: Any) -> str:
    """One value of a ``Description`` as ``vqgan-lc info`` prints it."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return " x ".join(str(x) for x in v)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def millions(n: int) -> str:
    """``12,345,678 (12.35M)``."""
    return f"{n:,} ({n / 1e6:.2f}M)"


TensorHeader = dict[str, tuple[list[int], str]]


def safetensors_header(path: str | Path) -> tuple[dict[str, str], TensorHeader]:
    """Metadata and ``name -> (shape, dtype)`` of a safetensors file, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UnknownFormatError(f"{path} is not a readable safetensors file ({e}), so it is none of "
                                 f"{NONE_OF_THEM}.") from e
    return meta, tensors


def numel(tensors: TensorHeader) -> int:
    """Total element count of a ``safetensors_header`` listing."""
    return sum(math.prod(shape) for shape, _ in tensors.values())


def dtype_names(tensors: TensorHeader) -> str:
    """The dtypes of a ``safetensors_header`` listing, by torch name."""
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}
    return ", ".join(sorted({names.get(d, d) for _, d in tensors.values()}))


__all__ = [
    "FORMATS",
    "Description",
    "Format",
    "FormatKind",
    "describe",
    "detect",
    "dtype_names",
    "format_value",
    "millions",
    "numel",
    "open_path",
    "safetensors_header",
]
