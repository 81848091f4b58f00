"""``vqgan-lc info``: what a path holds, or the list of presets.

The path's kind is read from the ``format`` name it records, never guessed from file names:

=====================  ==========================================  ==================
what                   where the format name is                     format
=====================  ==========================================  ==================
model directory        ``config.json``                              ``vqgan-lc-model``
GPT directory          ``config.json``                              ``vqgan-lc-gpt``
DiGIT tokenizer        ``config.json``                              ``vqgan-lc-digit``
token directory        ``manifest.json``                            ``vqgan-lc-tokens``
feature store          ``manifest.json``                            ``vqgan-lc-features``
codebook file          safetensors metadata (or the official .pth)  ``vqgan-lc-codebook``
=====================  ==========================================  ==================

Prints a title line and one ``key: value`` line per size (``--json``: one JSON object with the full
config and provenance as well). A path of no known format, or of a format version this vqgan-lc does
not read, stops with one sentence saying so (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import read_json_object
from ..errors import CheckpointError, FormatVersionError, UnknownFormatError


@dataclass
class Description:
    """``fields``: the sizes shown one per line; ``details``: the rest, only in ``--json``."""

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
        lines += [f"  {(k.replace('_', ' ') + ':'):{width + 1}s} {_fmt(v)}" for k, v in self.fields.items()]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
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


def _millions(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="a model, GPT or DiGIT tokenizer directory, a token directory, a feature "
                                           "store or a codebook file")
    p.add_argument("--presets", action="store_true", help="list the named model presets")
    p.add_argument("--json", action="store_true", help="print one JSON object (with the full config and provenance)")


def run(args: argparse.Namespace) -> int:
    from .. import get_config, list_models

    if args.presets or not args.path:
        for name in list_models():
            c = get_config(name)
            print(f"{name:20s} f{c.downsample_factor:<3d} D'={c.embed_dim:<3d} codebook {c.quantizer.codebook_size} x "
                  f"{c.quantizer.codebook_dim}  ch={c.ch} ch_mult={list(c.ch_mult)} {c.resolution}px")
        return 0
    path = Path(args.path)
    d = describe(path)
    print(json.dumps(d.to_json(path), indent=2, sort_keys=True) if args.json else d.to_text(path))
    return 0


# ----------------------------------------------------------------------------------------- dispatch
def _known() -> dict[str, tuple[str, int, Any]]:
    """format name -> (what it is, the version this vqgan-lc reads, describer)."""
    from ..codebook.io import CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION
    from ..codebook.store import STORE_FORMAT, STORE_FORMAT_VERSION
    from ..generate.digit import DIGIT_FORMAT, DIGIT_FORMAT_VERSION
    from ..generate.gpt import GPT_FORMAT, GPT_FORMAT_VERSION
    from ..model import MODEL_FORMAT, MODEL_FORMAT_VERSION
    from ..tokens.format import TOKENS_FORMAT, TOKENS_FORMAT_VERSION

    return {
        MODEL_FORMAT: ("model directory", MODEL_FORMAT_VERSION, _describe_model),
        GPT_FORMAT: ("GPT directory", GPT_FORMAT_VERSION, _describe_gpt),
        DIGIT_FORMAT: ("DiGIT tokenizer directory", DIGIT_FORMAT_VERSION, _describe_digit),
        TOKENS_FORMAT: ("token directory", TOKENS_FORMAT_VERSION, _describe_tokens),
        STORE_FORMAT: ("feature store", STORE_FORMAT_VERSION, _describe_store),
        CODEBOOK_FORMAT: ("codebook file", CODEBOOK_FORMAT_VERSION, _describe_codebook),
    }


DIR_FORMATS = {"config.json": ("vqgan-lc-model", "vqgan-lc-gpt", "vqgan-lc-digit"),
               "manifest.json": ("vqgan-lc-tokens", "vqgan-lc-features")}
NONE_OF_THEM = ("a model, GPT or DiGIT tokenizer directory, a token directory, a feature store or a codebook file")


def describe(path: Path) -> Description:
    """Recognise ``path`` by the format name it records and describe it.

    Raises ``UnknownFormatError`` for a path of no known format, ``FormatVersionError`` for a known
    format of a version this vqgan-lc does not read, and the format's own error (``CheckpointError``,
    ``TokenFormatError``, ``FeatureStoreError``, ``CodebookError``) for a damaged one.
    """
    if not path.exists():
        raise UnknownFormatError(f"{path} does not exist.")
    if path.is_dir():
        return _describe_dir(path)
    if path.name in DIR_FORMATS:  # `info DIR/config.json` means the directory
        return _describe_dir(path.parent)
    return _describe_file(path)


def _read_json(file: Path) -> dict[str, Any]:
    return read_json_object(file, error=UnknownFormatError, what="format record",
                            note=f", so {file.parent} is none of {NONE_OF_THEM}.")


def _dispatch(path: Path, where: str, fmt: Any, version: Any, allowed: tuple[str, ...]) -> Description:
    known = _known()
    if fmt not in allowed:
        raise UnknownFormatError(
            f"{path} is none of {NONE_OF_THEM}: {where} records format {fmt!r}, and this vqgan-lc knows "
            f"{', '.join(allowed)} there."
        )
    kind, expected, describer = known[fmt]
    if version != expected:
        raise FormatVersionError(
            f"{path} is a {kind} of format version {version!r} ({fmt}), but this vqgan-lc reads only version "
            f"{expected}: upgrade vqgan-lc to read it."
        )
    return describer(path)


def _describe_dir(path: Path) -> Description:
    for name, allowed in DIR_FORMATS.items():
        if (path / name).is_file():
            meta = _read_json(path / name)
            return _dispatch(path, name, meta.get("format"), meta.get("format_version"), allowed)
    if (path / "encode.json").is_file():
        raise UnknownFormatError(f"{path} is an unfinished token directory (encode.json but no manifest.json): rerun "
                                 "the same `vqgan-lc encode` command to complete it.")
    raise UnknownFormatError(f"{path} is none of {NONE_OF_THEM}: the directory has neither a config.json nor a "
                             "manifest.json.")


def _describe_file(path: Path) -> Description:
    if path.suffix == ".safetensors":
        meta, _ = _safetensors_header(path)
        fmt = meta.get("format")
        if fmt == "vqgan-lc-codebook":
            return _dispatch(path, "its metadata", fmt, _int_or_none(meta.get("format_version")), (fmt,))
        if fmt in DIR_FORMATS["config.json"]:
            raise UnknownFormatError(f"{path} is the weights file of a {_known()[fmt][0]}: pass the directory "
                                     f"{path.parent} instead.")
        raise UnknownFormatError(f"{path} is a safetensors file but none of {NONE_OF_THEM} (its metadata records "
                                 f"format {fmt!r}, a codebook file records 'vqgan-lc-codebook').")
    if path.suffix in (".pth", ".pt", ".bin"):
        from ..codebook.io import load_codebook
        from ..errors import CodebookError

        try:
            cb = load_codebook(path)
        except CodebookError as e:
            raise UnknownFormatError(
                f"{path} is not the official codebook file (one pickled (N, d) float tensor), and an official model "
                "checkpoint is turned into a model directory with `vqgan-lc convert`."
            ) from e
        return Description("official codebook file", None, None, {"codebook_size": cb.size, "dim": cb.dim},
                           {"provenance": cb.provenance})
    raise UnknownFormatError(f"{path} is none of {NONE_OF_THEM}; directories are described by passing the "
                             "directory itself.")


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[list[int], str]]]:
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


def _numel(tensors: dict[str, tuple[list[int], str]]) -> int:
    return sum(math.prod(shape) for shape, _ in tensors.values())


def _dtypes(tensors: dict[str, tuple[list[int], str]]) -> str:
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}
    return ", ".join(sorted({names.get(d, d) for _, d in tensors.values()}))


# ----------------------------------------------------------------------------------------- describers
def _describe_model(path: Path) -> Description:
    from ..model import MODEL_FORMAT, MODEL_FORMAT_VERSION, VQGANLC

    model = VQGANLC.from_pretrained(path)
    c = model.config
    q = c.quantizer
    fields = {
        "quantizer": q.kind,
        "codebook_size": q.codebook_size,
        "codebook_dim": q.codebook_dim,
        "embed_dim": c.embed_dim,
        "downsample_factor": c.downsample_factor,
        "resolution": c.resolution,
        "weights": "inference (projected codes only)" if model.inference_only else "full",
        "parameters": _millions(sum(p.numel() for p in model.parameters())),
        "config_hash": model.config_hash(),
    }
    return Description("model directory", MODEL_FORMAT, MODEL_FORMAT_VERSION, fields,
                       {"config": c.to_dict(), "provenance": getattr(model, "provenance", {})})


def _describe_gpt(path: Path) -> Description:
    import torch

    from ..generate.gpt import CONFIG_NAME, GPT, GPT_FORMAT, GPT_FORMAT_VERSION, WEIGHTS_NAME, GPTConfig

    meta = _read_json(path / CONFIG_NAME)
    try:
        c = GPTConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME} has an invalid GPT config: {e}") from e
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} has a GPT config.json but no {WEIGHTS_NAME}; the directory is incomplete "
                              "(rerun `vqgan-lc train-gpt --resume` to export it)")
    _, tensors = _safetensors_header(path / WEIGHTS_NAME)
    with torch.device("meta"):  # the expected keys and shapes, without allocating the weights
        own = {k: list(v.shape) for k, v in GPT(c).state_dict().items()}
    found = {k: shape for k, (shape, _) in tensors.items()}
    if own != found:
        bad = sorted(set(own) ^ set(found)) + [k for k in own if k in found and own[k] != found[k]]
        raise CheckpointError(f"{path / WEIGHTS_NAME} does not fit its config.json (keys/shapes differ: "
                              f"{', '.join(bad[:4])})")
    if c.class_conditional:
        cond = f"class-conditional, {c.n_classes} classes" + (", null class (CFG)" if c.null_class else ", no null class")
    else:
        cond = "unconditional"
    if c.prefix_vocab:
        cond += f"; prefix of {c.prefix_len} ids in [0, {c.prefix_vocab})"
    prov = meta.get("provenance") or {}
    fields: dict[str, Any] = {
        "vocab_size": c.n_codes,
        "input_vocab": c.input_vocab,
        "grid": list(c.grid),
        "sequence_length": c.seq_len,
        "conditioning": cond,
        "classes": c.n_classes,
        "prefix_vocab": c.prefix_vocab,
        "prefix_grid": list(c.prefix_grid) if c.prefix_grid else None,
        "layers": c.n_layer,
        "heads": c.n_head,
        "width": c.n_embd,
        "mlp_ratio": c.mlp_ratio,
        "tied_head": c.tie_weights,
        "parameters": _millions(_numel(tensors)),
        "dtype": _dtypes(tensors),
    }
    if "steps" in prov:
        fields["trained_steps"] = prov["steps"]
        fields["final_loss"] = prov.get("final_loss")
    return Description("GPT directory", GPT_FORMAT, GPT_FORMAT_VERSION, fields,
                       {"config": c.to_dict(), "provenance": prov})


def _describe_digit(path: Path) -> Description:
    from ..generate.digit import (
        CODEBOOK_NAME,
        DIGIT_FORMAT,
        DIGIT_FORMAT_VERSION,
        EXTRACTOR_WEIGHTS_NAME,
        read_digit_config,
    )

    meta = read_digit_config(path)
    ext = meta.get("extractor") or {}
    cb_meta = meta.get("codebook") or {}
    cb_file = path / cb_meta.get("file", CODEBOOK_NAME)
    if not cb_file.is_file():
        raise CheckpointError(f"{cb_file} is missing; the DiGIT tokenizer directory is incomplete")
    cb_header, cb_tensors = _safetensors_header(cb_file)
    shape = cb_tensors.get("codebook", ([0, 0], ""))[0]
    if [cb_meta.get("size"), cb_meta.get("dim")] != shape:
        raise CheckpointError(f"{cb_file} holds a {shape} codebook but config.json records "
                              f"{cb_meta.get('size')} x {cb_meta.get('dim')}; the directory is damaged")
    try:
        cb_prov = json.loads(cb_header.get("provenance", "{}"))
    except json.JSONDecodeError:
        cb_prov = {}
    info = cb_prov.get("extractor_info") or {}
    layer = ext.get("layer")
    block = f" (block {info['block_index']} of {info['depth']})" if "block_index" in info and "depth" in info else ""
    if ext.get("embedded"):
        weights = f"embedded ({EXTRACTOR_WEIGHTS_NAME}"
        w = path / EXTRACTOR_WEIGHTS_NAME
        if w.is_file():
            weights += f", {_millions(_numel(_safetensors_header(w)[1]))} parameters)"
        else:
            weights += " is missing)"
    else:
        src = ext.get("weights")
        weights = f"{src} ({'present' if src and Path(src).is_file() else 'missing here'})"
    fields = {
        "backbone": ext.get("model"),
        "layer": f"{layer}{block}",
        "k": cb_meta.get("size"),
        "dim": cb_meta.get("dim"),
        "grid": meta.get("grid"),
        "load_size": ext.get("load_size"),
        "image_size": ext.get("image_size"),
        "weights": weights,
        "config_hash": meta.get("config_hash"),
    }
    if ext.get("model_kwargs"):
        fields["model_kwargs"] = ext["model_kwargs"]
    return Description("DiGIT tokenizer directory", DIGIT_FORMAT, DIGIT_FORMAT_VERSION, fields,
                       {"extractor": ext, "codebook": cb_meta, "codebook_provenance": cb_prov})


def _describe_tokens(path: Path) -> Description:
    from ..tokens.format import TOKENS_FORMAT, TOKENS_FORMAT_VERSION, read_manifest

    m = read_manifest(path)
    tok = m.get("tokenizer") or {}
    fields = {
        "tokenizer": tok.get("kind"),
        "codebook_size": tok.get("codebook_size"),
        "config_hash": tok.get("config_hash"),
        "grid": m.get("grid"),
        "dtype": m.get("dtype"),
        "rows": m.get("num_rows"),
        "skipped": m.get("num_skipped"),
        "shards": len(m.get("shards", [])),
        "classes": len(m.get("classes") or []),
        "image_size": (m.get("preprocessing") or {}).get("image_size"),
    }
    details = {k: m[k] for k in ("tokenizer", "grid", "dtype", "num_rows", "num_skipped", "preprocessing") if k in m}
    return Description("token directory", TOKENS_FORMAT, TOKENS_FORMAT_VERSION, fields, details)


def _describe_store(path: Path) -> Description:
    import numpy as np

    from ..codebook.store import STORE_FORMAT, STORE_FORMAT_VERSION, FeatureStore

    s = FeatureStore.open(path, require_complete=False)
    ext = s.extractor
    grid = s.manifest.get("grid")
    dim = s.manifest.get("dim")
    done = len(s.manifest.get("shards", {}))
    vectors = s.num_vectors if grid is not None else 0
    fields = {
        "extractor": ext.get("extractor"),
        "model": ext.get("model"),
        "layer": ext.get("layer"),
        "pool": s.pool,
        "dtype": s.options.get("dtype"),
        "sources": s.num_sources,
        "images": s.num_images,
        "skipped": len(s.skipped),
        "classes": len(s.classes),
        "grid": grid,
        "dim": dim,
        "features": vectors,
        "bytes": vectors * int(dim or 0) * np.dtype(s.options.get("dtype", "float32")).itemsize,
        "shards": f"{done} of {s.num_shards}",
        "complete": bool(s.manifest.get("complete", False)),
    }
    return Description("feature store", STORE_FORMAT, STORE_FORMAT_VERSION, fields,
                       {"options": s.options, "source_hash": s.source_hash})


def _describe_codebook(path: Path) -> Description:
    from ..codebook.io import CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION, load_codebook

    cb = load_codebook(path)
    p = cb.provenance
    fields = {
        "codebook_size": cb.size,
        "dim": cb.dim,
        "extractor": p.get("extractor"),
        "model": p.get("model"),
        "mode": p.get("mode"),
        "per_class_k": p.get("per_class_k"),
        "pooling": p.get("pooling"),
        "images": p.get("num_images"),
    }
    return Description("codebook file", CODEBOOK_FORMAT, CODEBOOK_FORMAT_VERSION,
                       {k: v for k, v in fields.items() if v is not None or k in ("codebook_size", "dim")},
                       {"provenance": p})
