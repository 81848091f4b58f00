"""Names -> local model directories: local paths, official release names, Hugging Face Hub repo ids.

``resolve_pretrained(x)`` returns a directory holding ``config.json`` + ``model.safetensors``:

1. ``x`` is an existing path: it is returned as is (a local directory always wins).
2. ``x`` is a release name of ``vqgan_lc.releases`` (``vqgan-lc-f16-100k``, ...): the official pickle and its
   codebook are fetched with ``huggingface_hub.hf_hub_download`` (its cache, revision, token and offline rules),
   checked (size always, sha256 where the table knows it), converted through the safe
   ``vqgan_lc.convert.convert_official`` and the converted directory cached under
   ``$HF_HOME/vqgan-lc/converted/<name>--<revision>/`` (written to a temporary name, then renamed). A later call
   finds that directory first and reads only its safetensors: no pickle, no hashing, no network.
3. ``x`` looks like ``org/name`` (or ``hf-hub:org/name``): a Hub repo in this package's format, fetched with
   ``huggingface_hub.snapshot_download`` (``config.json``, ``model.safetensors``, ``README.md`` only).

Offline is a mode: ``HF_HUB_OFFLINE=1`` (read from huggingface_hub's constants at call time), ``--offline``
(``enable_offline``) or ``local_files_only=True`` never touch the network and use the caches; a file that is
not cached raises ``PretrainedNotFoundError`` with one sentence naming the file, where it was looked for and
how to get it.

Publishing: ``write_model_card`` writes a Hub model card (README.md) into a model directory and
``push_to_hub`` uploads the directory with ``HfApi.upload_folder``.

Nothing here runs on import; huggingface_hub is imported only when a name (not a path) is resolved.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from ._io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_json, atomic_write_text, fsync_dir, sha256_file
from .errors import CheckpointError, PretrainedNotFoundError, UnsupportedReleaseError, VQGANLCError
from .releases import Release, ReleaseFile, ReleaseKind, get_release, is_release, list_releases

log = logging.getLogger(__name__)

ModelKind = Literal["vqgan-lc", "gpt"]
"""What ``resolve_pretrained`` is asked for (a release of another kind is refused)."""

HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")
"""The files of a Hub repo in this package's format that ``snapshot_download`` fetches."""

CACHE_ENV = "VQGAN_LC_CACHE"
"""Environment variable: where converted releases are cached (default ``$HF_HOME/vqgan-lc/converted``)."""

RELEASE_MARKER = "release.json"
"""Written beside a converted release's weights: where it came from and the checks it passed."""

MARKER_FORMAT = "vqgan-lc-converted-release"
MARKER_FORMAT_VERSION = 1

Converter = Callable[[Release, Mapping[str, Path], Path, Mapping[str, Any]], None]
"""``convert(release, local files by role, output directory, provenance record)``: writes a model directory."""

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_forced_offline = False


# ----------------------------------------------------------------------------------------- offline mode
def enable_offline() -> None:
    """Offline mode for this process: as ``HF_HUB_OFFLINE=1`` (also for huggingface_hub, timm and open_clip when
    called before they are imported, and for an already imported huggingface_hub too)."""
    global _forced_offline
    _forced_offline = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported already: its constant was read from the environment at import
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def is_offline(local_files_only: bool = False) -> bool:
    """True when no network may be used: ``local_files_only``, ``enable_offline()`` or huggingface_hub's
    ``HF_HUB_OFFLINE`` (its constant, read now)."""
    if local_files_only or _forced_offline:
        return True
    constants = _hf_module("huggingface_hub.constants")
    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(getattr(constants, "HF_HUB_OFFLINE", False))


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--offline`` to a CLI parser; call ``apply_offline_argument(args)`` before resolving names."""
    parser.add_argument("--offline", action="store_true",
                        help="use only local files and caches (as HF_HUB_OFFLINE=1); never touch the network")


def apply_offline_argument(args: argparse.Namespace) -> bool:
    """``enable_offline()`` when ``args.offline`` is set; returns whether offline mode is on."""
    if getattr(args, "offline", False):
        enable_offline()
        return True
    return False


def _offline_reason(local_files_only: bool) -> str:
    if local_files_only:
        return "local_files_only=True"
    if _forced_offline:
        return "--offline"
    return "HF_HUB_OFFLINE=1"


# ----------------------------------------------------------------------------------------- huggingface_hub
def _hf_module(name: str = "huggingface_hub") -> ModuleType:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise VQGANLCError(
            "loading a model by name needs huggingface_hub: pip install 'vqgan-lc[hub]' (or pass a local model directory)"
        ) from e


def _hf_errors() -> ModuleType:
    return _hf_module("huggingface_hub.errors")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The huggingface_hub cache that downloads go to (``cache_dir`` or ``$HF_HUB_CACHE``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(_hf_module("huggingface_hub.constants").HF_HUB_CACHE)


def converted_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted releases live: ``cache_dir/vqgan-lc/converted`` when ``cache_dir`` is given, else
    ``$VQGAN_LC_CACHE``, else ``$HF_HOME/vqgan-lc/converted``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "vqgan-lc" / "converted"
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(_hf_module("huggingface_hub.constants").HF_HOME) / "vqgan-lc" / "converted"


def looks_like_repo_id(name: str) -> bool:
    """``org/name`` with the Hub's characters (no ``--``/``..``): what ``resolve_pretrained`` sends to the Hub."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name


# ----------------------------------------------------------------------------------------- resolve
def resolve_pretrained(
    name_or_path: str | os.PathLike,
    *,
    kind: ModelKind = "vqgan-lc",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    repo: str | None = None,
) -> Path:
    """A local model directory for ``name_or_path``: an existing path, a release name or a Hub repo id.

    ``revision`` (branch, tag or commit), ``cache_dir`` (the huggingface_hub cache; converted releases go to
    ``cache_dir/vqgan-lc/converted``), ``local_files_only`` and ``token`` mean what they mean in
    ``huggingface_hub.hf_hub_download``. ``repo`` reads a release's files from another Hub repo (as
    ``$VQGAN_LC_RELEASE_REPO``). Raises ``PretrainedNotFoundError`` for a file neither cached nor reachable,
    ``CheckpointError`` for a file whose size or sha256 disagrees, or a repo not in this package's format.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_release(text):
        return _resolve_release(get_release(text, repo=repo), kind=kind, revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
    repo_id = text.removeprefix("hf-hub:")
    if looks_like_repo_id(repo_id):
        return _resolve_hub_repo(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                 token=token, local_hint=text != repo_id)
    raise PretrainedNotFoundError(
        f"{text} is neither an existing path, a release name ({', '.join(list_releases(kind))}) nor a Hub repo id "
        "(org/name); check the path or pass one of those names"
    )


def _resolve_hub_repo(repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None,
                      local_files_only: bool, token: str | bool | None, local_hint: bool) -> Path:
    hf = _hf_module()
    errors = _hf_errors()
    offline = is_offline(local_files_only)
    rev = revision or "main"
    where = f"Hub repo {repo_id} at revision {rev}"
    also = "" if local_hint else f" and there is no local directory {repo_id}"
    try:
        folder = Path(hf.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                           token=token, allow_patterns=list(HUB_FILES)))
    except errors.RevisionNotFoundError as e:
        raise PretrainedNotFoundError(f"{where}: the revision does not exist{also}; pass an existing branch, tag "
                                      "or commit as revision") from e
    except errors.RepositoryNotFoundError as e:
        raise PretrainedNotFoundError(
            f"{repo_id} is not a Hub repo you can read{also}; check the name, pass token= for a private or "
            f"gated repo, or use a release name ({', '.join(list_releases())})"
        ) from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise PretrainedNotFoundError(
            _not_cached(f"{CONFIG_NAME} and {WEIGHTS_NAME} of {where}", offline, local_files_only, cache_dir,
                        "go online once to fill the cache, or copy the repo's files into a directory and pass that "
                        "directory")
        ) from e
    except Exception as e:  # the client's network, proxy and HTTP errors: one sentence, no traceback
        raise PretrainedNotFoundError(f"{where} could not be downloaded ({type(e).__name__}: {_first_line(e)}); "
                                      "retry, or download its files yourself and pass the directory") from e
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing and offline:
        raise PretrainedNotFoundError(_not_cached(f"{' and '.join(missing)} of {where}", offline, local_files_only,
                                                  cache_dir, "go online once to fill the cache"))
    if missing:
        raise CheckpointError(
            f"{where} has no {' or '.join(missing)}, so it is not a vqgan-lc model repo; an official .pth release "
            f"loads by its release name ({', '.join(list_releases())}) or converts with `vqgan-lc convert`"
        )
    return folder


def _resolve_release(release: Release, *, kind: ModelKind, revision: str | None, cache_dir: str | os.PathLike | None,
                     local_files_only: bool, token: str | bool | None) -> Path:
    if release.kind != kind:
        raise CheckpointError(
            f"{release.name} is a {release.kind} release, not a {kind} model; load it with the "
            f"{'GPT' if release.kind == 'gpt' else 'VQGANLC'} class (or pass a {kind} name: "
            f"{', '.join(list_releases(kind))})"
        )
    converter = _CONVERTERS.get(release.kind)
    if converter is None:
        raise UnsupportedReleaseError(
            f"{release.name} ({release.checkpoint.path}) is a {release.kind} release, and this vqgan-lc cannot "
            f"convert {release.kind} checkpoints yet; use a tokenizer release ({', '.join(list_releases('vqgan-lc'))}) "
            "or upgrade vqgan-lc"
        )
    rev = revision or release.revision
    target = converted_cache_dir(cache_dir) / f"{release.name}--{_safe_name(rev)}"
    if _converted_matches(target, release, rev):
        log.info("%s: using the converted copy in %s", release.name, target)
        return target

    offline = is_offline(local_files_only)
    files = {role: _download(release, f, rev, cache_dir=cache_dir, token=token, offline=offline,
                             local_files_only=local_files_only)
             for role, f in release.files.items()}
    checked = {role: _verify(release, release.files[role], rev, files[role]) for role in files}
    commit = _snapshot_commit(files["checkpoint"])
    record = {
        "format": MARKER_FORMAT,
        "format_version": MARKER_FORMAT_VERSION,
        "release": release.name,
        "kind": release.kind,
        "repo": release.repo,
        "revision": rev,
        "commit": commit,
        "note": release.note,
        "licence": release.licence,
        "files": checked,
    }
    return _convert_into(target, release, files, record, converter)


def _download(release: Release, f: ReleaseFile, rev: str, *, cache_dir: str | os.PathLike | None,
              token: str | bool | None, offline: bool, local_files_only: bool) -> Path:
    hf = _hf_module()
    errors = _hf_errors()
    where = f"{f.path} of release {release.name} (Hub repo {release.repo} at revision {rev})"
    how = (f"go online once to fetch it ({f.listed}), or download {_file_url(release.repo, f.path, rev)} yourself and "
           f"convert it with `vqgan-lc convert{' --format gpt' if release.kind == 'gpt' else ''} --checkpoint FILE"
           f"{' --codebook CODEBOOK' if release.codebook else ''}"
           f"{' --preset ' + release.preset if release.preset else ''} --out DIR`, then pass DIR")
    try:
        path = hf.hf_hub_download(repo_id=release.repo, filename=f.path, revision=rev, cache_dir=cache_dir,
                                  local_files_only=offline, token=token)
    except errors.RevisionNotFoundError as e:
        raise PretrainedNotFoundError(f"{where}: the revision does not exist; pass an existing branch, tag or commit "
                                      "as revision") from e
    except errors.RepositoryNotFoundError as e:
        raise PretrainedNotFoundError(f"{where}: the repo does not exist or is private; check "
                                      f"$VQGAN_LC_RELEASE_REPO / repo=, or pass token=") from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise PretrainedNotFoundError(_not_cached(where, offline, local_files_only, cache_dir, how)) from e
    except getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError) as e:
        raise PretrainedNotFoundError(f"{where} is not on the Hub; point the release at a repo that has it "
                                      "(repo= or $VQGAN_LC_RELEASE_REPO)") from e
    except Exception as e:  # the client's network, proxy and HTTP errors: one sentence, no traceback
        raise PretrainedNotFoundError(f"{where} could not be downloaded ({type(e).__name__}: {_first_line(e)}); "
                                      f"retry, or {how}") from e
    log.info("%s: %s", release.name, path)
    return Path(path)


def _not_cached(what: str, offline: bool, local_files_only: bool, cache_dir: str | os.PathLike | None, how: str) -> str:
    why = (f"offline mode is on ({_offline_reason(local_files_only)})" if offline
           else f"the Hub at {_endpoint()} could not be reached")
    return f"{what}: not in the Hugging Face cache {hub_cache_dir(cache_dir)}, and {why}; {how}"


def _verify(release: Release, f: ReleaseFile, rev: str, path: Path) -> dict[str, Any]:
    """Check size (always) and sha256 (always computed, compared when the table knows it); returns what passed."""
    size = path.stat().st_size
    label = f"{path} ({release.repo}@{rev}:{f.path})"
    fix = (f"the download is truncated or the repo holds another file under that name: delete it from the cache "
           f"(huggingface-cli delete-cache, or remove {path.resolve()}) and retry, or if you trust this file, "
           "register the release again with its size and sha256 (vqgan_lc.releases.register_release)")
    problem = f.size_problem(size)
    if problem is not None:
        raise CheckpointError(f"{label} {problem}; {fix}")
    log.info("%s: hashing %s (%.0f MiB), once", release.name, f.name, size / 2**20)
    digest = sha256_file(path)
    if f.sha256 is not None and digest != f.sha256.lower():
        raise CheckpointError(f"{label} has sha256 {digest}, expected {f.sha256}; {fix}")
    return {"path": f.path, "size": size, "sha256": digest, "sha256_checked": f.sha256 is not None}


def _converted_matches(target: Path, release: Release, rev: str) -> bool:
    """Whether ``target`` is a complete conversion of these files of ``release`` at ``rev``."""
    marker = target / RELEASE_MARKER
    if not (marker.is_file() and (target / CONFIG_NAME).is_file() and (target / WEIGHTS_NAME).is_file()):
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format") != MARKER_FORMAT or meta.get("format_version") != MARKER_FORMAT_VERSION:
        return False
    if meta.get("repo") != release.repo or meta.get("revision") != rev:
        return False
    recorded = meta.get("files", {})
    for role, f in release.files.items():
        got = recorded.get(role, {})
        if got.get("path") != f.path or f.size_problem(int(got.get("size", -1))) is not None:
            return False
        if f.sha256 is not None and got.get("sha256") != f.sha256.lower():
            return False
    return True


def _convert_into(target: Path, release: Release, files: Mapping[str, Path], record: dict[str, Any],
                  converter: Converter) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log.info("%s: converting %s into %s", release.name, release.checkpoint.name, target)
        converter(release, files, tmp, record)
        atomic_write_json(tmp / RELEASE_MARKER, record)
        stale = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():  # an earlier conversion of other files (another repo or table row)
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _converted_matches(target, release, record["revision"]):  # not another process's twin
                raise
        shutil.rmtree(stale, ignore_errors=True)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_vqgan_lc(release: Release, files: Mapping[str, Path], out: Path, record: Mapping[str, Any]) -> None:
    from .convert import convert_official

    arch: dict[str, Any] = {"config": release.config} if release.config is not None else {"preset": release.preset}
    model = convert_official(files["checkpoint"], codebook=files.get("codebook"), **arch)
    provenance = {**model.provenance, "release": {k: record[k] for k in ("release", "repo", "revision", "commit",
                                                                         "note", "licence", "files")}}
    model.save_pretrained(out, provenance=provenance)


def _convert_gpt(release: Release, files: Mapping[str, Path], out: Path, record: Mapping[str, Any]) -> None:
    from .convert_gpt import convert_official_gpt

    gpt = convert_official_gpt(files["checkpoint"], **release.options)
    provenance = {**gpt.provenance, "tokenizer_release": release.tokenizer,
                  "release": {k: record[k] for k in ("release", "repo", "revision", "commit", "note", "licence", "files")}}
    gpt.save_pretrained(out, provenance=provenance)


_CONVERTERS: dict[str, Converter] = {"vqgan-lc": _convert_vqgan_lc, "gpt": _convert_gpt}


def register_converter(kind: ReleaseKind, converter: Converter) -> None:
    """Make releases of ``kind`` loadable by name: ``converter(release, files, out_dir, record)`` writes a model
    directory from the downloaded, checked files (``files["checkpoint"]``, ``files["codebook"]``)."""
    _CONVERTERS[kind] = converter


def _snapshot_commit(path: Path) -> str | None:
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _safe_name(revision: str) -> str:
    return re.sub(r"[^\w.-]", "_", revision)


def _file_url(repo: str, path: str, revision: str) -> str:
    return f"{_endpoint()}/{repo}/resolve/{revision}/{path}"


def _endpoint() -> str:
    constants = sys.modules.get("huggingface_hub.constants")
    return str(getattr(constants, "ENDPOINT", None) or os.environ.get("HF_ENDPOINT", "https://huggingface.co")).rstrip("/")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------------- publishing
CARD_NAME = "README.md"
CARD_TAGS = ("image-tokenizer", "vqgan", "vqgan-lc", "vector-quantization", "pytorch")


def _load_report(report: str | os.PathLike | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if report is None or isinstance(report, Mapping):
        return report
    from .metrics.report import REPORT_FORMAT, REPORT_JSON

    path = Path(report)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise VQGANLCError(f"evaluation report {path} does not exist; pass the report.json (or its folder) that "
                           "`vqgan-lc evaluate --out DIR` wrote")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise VQGANLCError(f"{path} is not valid JSON ({e}); pass the report.json of `vqgan-lc evaluate`") from e
    if not isinstance(meta, dict) or meta.get("format") != REPORT_FORMAT:
        raise VQGANLCError(f"{path} is not a vqgan-lc evaluation report (format {REPORT_FORMAT!r}); pass the "
                           "report.json of `vqgan-lc evaluate`")
    return meta


def _metrics_section(report: Mapping[str, Any]) -> list[str]:
    from .metrics.report import METRIC_LABELS

    data = report.get("data", {})
    lines = ["## Evaluation", ""]
    if data:
        lines += [f"`vqgan-lc evaluate` on `{data.get('path')}`: {data.get('images', '?')} images at "
                  f"{data.get('image_size', '?')} px ({data.get('mode', '?')} mode).", ""]
    lines += ["| metric | value | notes |", "|---|---|---|"]
    for key, entry in report.get("metrics", {}).items():
        label, fmt = METRIC_LABELS.get(key, (key, "{:.4g}"))
        if entry.get("computed") and entry.get("value") is not None:
            value, note = fmt.format(entry["value"]), str(entry.get("note", ""))
        else:
            value, note = "not computed", str(entry.get("reason", ""))
        lines.append(f"| {label} | {value} | {note.replace('|', '/')} |")
    return [*lines, ""]


def _thousands(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def model_card_text(model_dir: str | os.PathLike, report: str | os.PathLike | Mapping[str, Any] | None = None, *,
                    repo_id: str | None = None, license: str | None = None) -> str:
    """The model card of a model directory: YAML front matter (library, tags, licence) then the config, the
    codebook provenance from ``config.json`` and, when ``report`` (a ``vqgan-lc evaluate`` report.json, its
    folder, or the dict) is given, its numbers."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{model_dir} has no {CONFIG_NAME}: write the model with save_pretrained first")
    meta = json.loads(cfg_path.read_text())
    config = meta.get("config", {})
    provenance = meta.get("provenance", {}) or {}
    report_meta = _load_report(report)
    card_data = _hf_module().ModelCardData(library_name="vqgan-lc", tags=list(CARD_TAGS), license=license)
    name = repo_id or model_dir.name
    q = config.get("quantizer", {})
    ch_mult = config.get("ch_mult", [])
    factor = 2 ** (len(ch_mult) - 1) if ch_mult else None
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# {name}", "",
        f"A [vqgan-lc](https://github.com/zh460045050/VQGAN-LC) image tokenizer ({meta.get('format', '?')} "
        f"v{meta.get('format_version', '?')}, {meta.get('weights', 'full')} weights): "
        f"f{factor}, {q.get('kind', '?')} quantizer with {_thousands(q.get('codebook_size'))} codes of dimension "
        f"{q.get('codebook_dim', '?')}, projected to D'={config.get('embed_dim', '?')}, trained at "
        f"{config.get('resolution', '?')} px.",
        "",
        "```python",
        "from vqgan_lc import VQGANLC",
        f'tok = VQGANLC.from_pretrained("{name}")',
        "ids = tok.encode(images)   # (B, 3, H, W) in [-1, 1] -> (B, H/f, W/f) int64",
        "recon = tok.decode(ids)",
        "```",
        "",
    ]
    if report_meta is not None:
        lines += _metrics_section(report_meta)
    lines += ["## Codebook and provenance", ""]
    release = provenance.get("release")
    if isinstance(release, Mapping):
        lines += [f"Converted from the official release `{release.get('release')}` ({release.get('note', '')}: "
                  f"`{release.get('repo')}` at `{release.get('commit') or release.get('revision')}`). "
                  f"Licence: {release.get('licence', 'unknown')}.", ""]
    codebook = provenance.get("codebook")
    if isinstance(codebook, Mapping):
        parts = [f"{k}: `{v}`" for k, v in codebook.items() if isinstance(v, (str, int, float, bool))]
        lines += ["Codebook: " + (", ".join(parts) if parts else "see below") + ".", ""]
    elif provenance.get("codebook_file"):
        lines += [f"Codebook: `{provenance['codebook_file']}` (the k-means file the official model was trained "
                  "with, kept frozen).", ""]
    lines += ["```json", json.dumps(provenance, indent=2, sort_keys=True), "```", "",
              "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_model_card(model_dir: str | os.PathLike, report: str | os.PathLike | Mapping[str, Any] | None = None, *,
                     repo_id: str | None = None, license: str | None = None) -> Path:
    """Write ``model_card_text(...)`` to ``model_dir/README.md`` (atomically); returns its path."""
    path = Path(model_dir) / CARD_NAME
    atomic_write_text(path, model_card_text(model_dir, report, repo_id=repo_id, license=license))
    return path


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    commit_message: str = "Upload vqgan-lc model",
    report: str | os.PathLike | Mapping[str, Any] | None = None,
    revision: str | None = None,
    license: str | None = None,
) -> str:
    """Upload a model directory (``config.json``, ``model.safetensors`` and a freshly written model card) to the
    Hub repo ``repo_id`` (created if missing); returns the commit URL. Refused in offline mode."""
    model_dir = Path(model_dir)
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (model_dir / f).is_file()]
    if missing:
        raise CheckpointError(f"{model_dir} has no {' or '.join(missing)}; write it with save_pretrained first")
    if not looks_like_repo_id(repo_id):
        raise VQGANLCError(f"{repo_id!r} is not a Hub repo id; pass org/name")
    if is_offline():
        raise PretrainedNotFoundError(f"cannot push {model_dir} to {repo_id}: offline mode is on "
                                      f"({_offline_reason(False)}); unset it to upload")
    write_model_card(model_dir, report, repo_id=repo_id, license=license)
    api = _hf_module().HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), commit_message=commit_message,
                             token=token, revision=revision, allow_patterns=list(HUB_FILES))
    url = str(getattr(info, "commit_url", info))
    log.info("pushed %s to %s: %s", model_dir, repo_id, url)
    return url


__all__ = [
    "CACHE_ENV",
    "HUB_FILES",
    "RELEASE_MARKER",
    "Converter",
    "ModelKind",
    "add_offline_argument",
    "apply_offline_argument",
    "converted_cache_dir",
    "enable_offline",
    "hub_cache_dir",
    "is_offline",
    "looks_like_repo_id",
    "model_card_text",
    "push_to_hub",
    "register_converter",
    "resolve_pretrained",
    "write_model_card",
]
