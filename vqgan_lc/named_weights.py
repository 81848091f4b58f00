"""Pretrained extractors and metric networks by the names their libraries use, fetched through the
library's own client and cache only when the user names them; offline honoured; local paths win.

Three caches, the ones the anchors use:

* **torch hub checkpoints** (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``):
  torchvision's ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth`` (the LPIPS trunks; lpips and torchmetrics
  look there through torchvision), torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (torchmetrics'
  FID network), pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and the DINOv2 torch.hub weights
  (``dinov2_vitb14_reg4_pretrain.pth``, ...). ``resolve_checkpoint`` takes a path (used as is), a name from
  ``CHECKPOINTS`` (its key, an alias such as ``torchvision``, its standard file name or its URL: looked up in
  the cache, downloaded into it with ``torch.hub.download_url_to_file`` when missing and online, hash-checked
  where the file name carries a sha256 prefix, as torchvision does), or ``None`` (the cached standard file
  when present, else ``None``: nothing is downloaded unless named).
* **open_clip tags** (``ViT-L-14`` + ``openai``): the tag's ``hf_hub`` entry read with huggingface_hub's
  ``hf_hub_download`` (its cache, or open_clip's ``cache_dir``), the safetensors file first as open_clip
  does; a URL-only tag goes through open_clip's own downloader and cache.
* **timm names** (``vit_base_patch14_reg4_dinov2.lvd142m``): the pretrained config's ``hf_hub_id``,
  ``model.safetensors`` first then ``pytorch_model.bin``, as timm downloads them.

Offline (``HF_HUB_OFFLINE=1``, ``--offline``) means caches only: a named file that is not cached raises
``PretrainedNotFoundError`` with one sentence naming it, where it was looked for and how to get it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ExtractorError, PretrainedNotFoundError, VQGANLCError

log = logging.getLogger(__name__)

CheckpointRole = Literal["lpips-vgg", "lpips-alex", "inception", "dinov2"]
"""What a torch hub checkpoint is for: the option it may be passed to."""


@dataclass(frozen=True)
class HubCheckpoint:
    """One standard file of the torch hub checkpoint cache: its name there, where it comes from, who uses it."""

    key: str
    role: CheckpointRole
    filename: str
    url: str
    library: str
    aliases: tuple[str, ...] = ()
    check_hash: bool = False
    """The file name carries the first hex digits of its sha256 (torchvision's convention): checked on download."""

    def names(self) -> tuple[str, ...]:
        return (self.key, *self.aliases, self.filename, self.url)


def _dinov2(key: str, arch: str, reg: bool) -> HubCheckpoint:
    full = f"dinov2_{arch}{'_reg4' if reg else ''}"
    return HubCheckpoint(key, "dinov2", f"{full}_pretrain.pth", f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/"
                         f"{full}_pretrain.pth", "torch.hub facebookresearch/dinov2")


CHECKPOINTS: dict[str, HubCheckpoint] = {c.key: c for c in (
    HubCheckpoint("vgg16", "lpips-vgg", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                  "torchvision (VGG16_Weights.IMAGENET1K_V1), lpips", ("torchvision", "vgg"), check_hash=True),
    HubCheckpoint("alexnet", "lpips-alex", "alexnet-owt-7be5be79.pth",
                  "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                  "torchvision (AlexNet_Weights.IMAGENET1K_V1), lpips", ("torchvision", "alex"), check_hash=True),
    HubCheckpoint("torch-fidelity", "inception", "weights-inception-2015-12-05-6726825d.pth",
                  "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                  "weights-inception-2015-12-05-6726825d.pth", "torch-fidelity, torchmetrics FID", ("torchmetrics",)),
    HubCheckpoint("pytorch-fid", "inception", "pt_inception-2015-12-05-6726825d.pth",
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth", "pytorch-fid"),
    *(_dinov2(f"dinov2_{a}{'_reg' if r else ''}", a, r) for r in (False, True) for a in ("vits14", "vitb14", "vitl14", "vitg14")),
)}
"""The standard files, by key; the first of each role is the default that ``None`` finds in the cache."""

_HASH = re.compile(r"-([a-f0-9]{6,})\.")


def checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision, torch-fidelity, torchmetrics and torch.hub cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline() -> bool:
    try:
        from .hub import is_offline

        return is_offline()
    except VQGANLCError:  # no huggingface_hub: only the environment can say
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _offline_reason() -> str:
    from . import hub

    return "--offline" if getattr(hub, "_forced_offline", False) else "HF_HUB_OFFLINE=1"


def find_checkpoint(name: str, role: CheckpointRole | None = None) -> HubCheckpoint | None:
    """The standard file ``name`` stands for (key, alias, file name or URL; of ``role`` if given), or None."""
    for c in CHECKPOINTS.values():
        if (role is None or c.role == role) and name in c.names():
            return c
    return None


def cached_checkpoint(role: CheckpointRole) -> Path | None:
    """The first standard file of ``role`` already in the torch hub cache, or None; never downloads."""
    for c in CHECKPOINTS.values():
        path = checkpoints_dir() / c.filename
        if c.role == role and path.is_file():
            return path
    return None


def fetch_checkpoint(c: HubCheckpoint, *, option: str | None = None) -> Path:
    """``c`` from the torch hub cache, downloaded into it first when missing (unless offline)."""
    path = checkpoints_dir() / c.filename
    if path.is_file():
        return path
    how = f"pass a local copy{' with ' + option if option else ''}, or download {c.url} into {path.parent}"
    if _offline():
        raise PretrainedNotFoundError(f"{c.filename} ({c.library}) is not in the torch hub cache {path.parent} and "
                                      f"offline mode is on ({_offline_reason()}); go online once or {how}")
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH.search(c.filename) if c.check_hash else None
    log.info("downloading %s into %s", c.url, path)
    try:
        torch.hub.download_url_to_file(c.url, str(path), hash_prefix=match.group(1) if match else None, progress=False)
    except Exception as e:  # network, HTTP and hash errors of urllib / torch.hub
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedNotFoundError(f"{c.filename} could not be downloaded from {c.url} ({type(e).__name__}: "
                                      f"{first}); retry, or {how}") from e
    return path


def resolve_checkpoint(value: str | os.PathLike | None, role: CheckpointRole, *, option: str | None = None) -> Path | None:
    """A weights option's value -> a local file: an existing path as is; a standard name of ``role`` from the
    cache (downloaded when missing, unless offline); ``None`` -> the cached standard file or ``None``. Any other
    value is returned as a ``Path`` so the loader names the missing file in its own sentence."""
    if value is None:
        found = cached_checkpoint(role)
        if found is not None:
            log.info("%s: using %s from the torch hub cache", option or role, found)
        return found
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        return path
    c = find_checkpoint(text, role)
    return fetch_checkpoint(c, option=option) if c is not None else path


def checkpoint_names(role: CheckpointRole) -> list[str]:
    """The names a user may type for ``role`` (keys and aliases), for help texts and errors."""
    out: list[str] = []
    for c in CHECKPOINTS.values():
        if c.role == role:
            out += [n for n in (c.key, *c.aliases) if n not in out]
    return out


# ----------------------------------------------------------------------------------------- Hugging Face files
def _hf_file(repo: str, filenames: tuple[str, ...], *, what: str, cache_dir: str | os.PathLike | None,
             library: str, how: str) -> Path:
    """The first of ``filenames`` in ``repo`` that huggingface_hub finds (cache, or download when online)."""
    from .hub import _hf_errors, _hf_module, hub_cache_dir

    hf, errors = _hf_module(), _hf_errors()
    offline = _offline()
    last: Exception | None = None
    unreachable = False
    for name in filenames:
        try:
            return Path(hf.hf_hub_download(repo_id=repo, filename=name, cache_dir=cache_dir, local_files_only=offline,
                                           library_name=library))
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:  # not cached, Hub unreachable
            last, unreachable = e, True
        except errors.EntryNotFoundError as e:  # the Hub answered: no such file, try the next name
            last = e
        except errors.RepositoryNotFoundError as e:
            raise PretrainedNotFoundError(f"{what}: the Hub repo {repo} does not exist or is private; {how}") from e
        except Exception as e:  # the client's network, proxy and HTTP errors: one sentence, no traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedNotFoundError(f"{what} could not be downloaded from {repo} ({type(e).__name__}: {first}); "
                                          f"retry, or {how}") from e
    files = " or ".join(filenames)
    if offline:
        raise PretrainedNotFoundError(f"{what} ({repo}: {files}) is not in the Hugging Face cache "
                                      f"{hub_cache_dir(cache_dir)} and offline mode is on ({_offline_reason()}); "
                                      f"go online once, or {how}") from last
    if unreachable:
        from .hub import _endpoint

        raise PretrainedNotFoundError(f"{what} ({repo}: {files}) is not in the Hugging Face cache "
                                      f"{hub_cache_dir(cache_dir)} and the Hub at {_endpoint()} could not be reached; "
                                      f"retry online, or {how}") from last
    raise PretrainedNotFoundError(f"{what}: {repo} has no {files}; {how}") from last


def open_clip_weights(model: str, tag: str, *, cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """The weights file of open_clip's pretrained ``tag`` for ``model`` (``ViT-L-14`` + ``openai``) and the tag's
    config (``quick_gelu``, ``mean``, ``std``, ...), through open_clip's registry and huggingface_hub's cache."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = dict(open_clip.get_pretrained_cfg(model, tag) or {})
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ExtractorError(f"open_clip has no pretrained tag {tag!r} for {model!r}; choose one of: "
                             f"{', '.join(tags) if tags else '(none: see open_clip.list_pretrained())'}")
    what = f"open_clip weights {model} / {tag}"
    how = "pass a local weights file with --weights"
    if cfg.get("file"):
        return Path(cfg["file"]), cfg
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(str(cfg["hf_hub"]))  # "org/name/" means open_clip's default file name
        filename = filename or HF_WEIGHTS_NAME
        names = [filename]
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        return _hf_file(repo, tuple(names), what=what, cache_dir=cache_dir, library="open_clip", how=how), cfg
    url = str(cfg.get("url", ""))
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if target.is_file():
        return target, cfg
    if _offline():
        raise PretrainedNotFoundError(f"{what} ({url}) is not in open_clip's cache {target.parent} and offline mode is "
                                      f"on ({_offline_reason()}); go online once, or {how}")
    from open_clip.pretrained import download_pretrained_from_url

    try:
        return Path(download_pretrained_from_url(url, cache_dir=str(cache_dir) if cache_dir else None)), cfg
    except Exception as e:  # urllib's network and HTTP errors
        raise PretrainedNotFoundError(f"{what} could not be downloaded from {url} ({type(e).__name__}); retry, or {how}") from e


def open_clip_hub_model(repo: str, *, cache_dir: str | os.PathLike | None = None,
                        with_weights: bool = True) -> tuple[Path, Path | None]:
    """An open_clip Hub model (``hf-hub:org/name``): its ``open_clip_config.json`` and, with ``with_weights``, its
    weights (``open_clip_model.safetensors`` first, then ``open_clip_pytorch_model.bin``), as open_clip reads them."""
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    what, how = f"open_clip model hf-hub:{repo}", "pass a local .json model config with --model and --weights PATH"
    config = _hf_file(repo, (HF_CONFIG_NAME,), what=what, cache_dir=cache_dir, library="open_clip", how=how)
    weights = _hf_file(repo, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME), what=what, cache_dir=cache_dir,
                       library="open_clip", how=how) if with_weights else None
    return config, weights


def timm_weights(name: str, *, cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The weights file of timm's pretrained ``name`` (``vit_base_patch14_reg4_dinov2.lvd142m``; without a tag,
    timm's default one) and the architecture name, read from the tag's ``hf_hub_id`` as timm downloads it."""
    import timm

    arch, _, tag = name.partition(".")
    if arch not in timm.list_models():
        raise ExtractorError(f"unknown timm architecture {arch!r}; pass a timm name such as "
                             "vit_base_patch14_reg4_dinov2.lvd142m")
    cfg = timm.models.get_pretrained_cfg(name if tag else arch)
    if cfg is None:
        tags = timm.list_pretrained(f"{arch}.*")
        raise ExtractorError(f"timm has no pretrained weights {name!r}; choose one of: {', '.join(tags) or '(none)'}")
    hf_id = getattr(cfg, "hf_hub_id", None)
    if not hf_id:
        raise ExtractorError(f"timm's {name} has no Hugging Face Hub source; pass a local weights file with --weights")
    path = _hf_file(hf_id, ("model.safetensors", "pytorch_model.bin"), what=f"timm weights {name}",
                    cache_dir=cache_dir, library="timm", how="pass a local weights file with --weights")
    return path, arch


def dinov2_weights(model: str, pretrained: bool | str = True, *,
                   cache_dir: str | os.PathLike | None = None) -> tuple[Path, str, str]:
    """The DINOv2 weights a name stands for: ``(file, timm architecture, source)``.

    ``model`` is a timm name, tagged (``vit_base_patch14_reg4_dinov2.lvd142m``) or not (then ``pretrained``:
    ``True`` = timm's default tag, a string = that tag), fetched as timm does (huggingface_hub cache,
    ``cache_dir``); or a torch.hub name (``dinov2_vitb14_reg``): the official ``*_pretrain.pth`` in the torch
    hub checkpoint cache. ``source`` (``timm:...`` / ``torch.hub:...``) is what provenance records."""
    from .extractors.dinov2 import DINOV2_HUB_TO_TIMM

    arch, _, tag = model.partition(".")
    if isinstance(pretrained, str) and pretrained:
        tag = pretrained
    if arch in DINOV2_HUB_TO_TIMM and not tag:
        return fetch_checkpoint(CHECKPOINTS[arch], option="--weights"), DINOV2_HUB_TO_TIMM[arch], f"torch.hub:{arch}"
    name = f"{DINOV2_HUB_TO_TIMM.get(arch, arch)}{'.' + tag if tag else ''}"
    path, timm_arch = timm_weights(name, cache_dir=cache_dir)
    return path, timm_arch, f"timm:{name}"


__all__ = [
    "CHECKPOINTS",
    "CheckpointRole",
    "HubCheckpoint",
    "cached_checkpoint",
    "checkpoint_names",
    "checkpoints_dir",
    "dinov2_weights",
    "fetch_checkpoint",
    "find_checkpoint",
    "open_clip_hub_model",
    "open_clip_weights",
    "resolve_checkpoint",
    "timm_weights",
]
