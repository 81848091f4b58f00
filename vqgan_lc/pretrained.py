"""``PretrainedMixin``: the save/load, config hash and provenance every pretrained object shares.

``VQGANLC``, ``GPT`` and the DiGIT ``DiscriminativeTokenizer`` inherit it. A subclass declares

* ``FORMAT`` / ``FORMAT_VERSION``: the ``format`` name and version its ``config.json`` records;
  ``READS_VERSIONS`` the versions ``from_pretrained`` accepts (default: only ``FORMAT_VERSION``);
* ``config_class``: the frozen config dataclass (``to_dict`` / ``from_dict``) stored under ``config``;
* ``WHAT`` / ``LOAD_HINT``: how its error sentences name the directory and what to do when it is missing,

and passes ``provenance=`` to its constructor: ``provenance`` (where the weights came from) is a
declared attribute set in ``__init__``, never patched on from outside.

The default directory is the weights directory of ``_io`` (``config.json`` with ``format``,
``format_version``, ``config``, ``provenance`` and the subclass's ``_config_extra()`` keys, plus
``model.safetensors``); a subclass with other files (DiGIT) overrides ``save_pretrained`` and
``_load_pretrained``. ``from_pretrained`` resolves its argument in one step, ``_resolve_pretrained``:
a local directory, an official release name or a Hub repo id (``vqgan_lc.hub``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from ._io import load_weights_dir, save_weights_dir, state_dict_mismatch
from .errors import CheckpointError

log = logging.getLogger(__name__)

P = TypeVar("P", bound="PretrainedMixin")


class ConfigClass(Protocol):
    """What ``config_class`` must offer: ``from_dict`` (refusing unknown keys) and ``to_dict``."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


def _resolve_pretrained(
    path: str | os.PathLike,
    *,
    kind: str = "vqgan-lc",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local directory that ``path`` names: an existing path wins; an official release name
    (``vqgan-lc-f16-100k``) or a Hub repo id (``org/name``) goes through ``vqgan_lc.hub`` (huggingface_hub's
    client and cache, offline mode honoured); anything else is returned as a ``Path`` so the loader names
    the missing directory in its own sentence."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"expected a model directory, a Hub repo id or a release name, got "
                              f"{type(path).__name__}; pass e.g. 'vqgan-lc-f16-100k' or the path of a saved model")
    local = Path(path).expanduser()
    if local.exists():
        return local
    from .hub import looks_like_repo_id, resolve_pretrained
    from .releases import is_release

    text = os.fspath(path)
    if is_release(text) or looks_like_repo_id(text.removeprefix("hf-hub:")):
        return resolve_pretrained(text, kind=kind, revision=revision, cache_dir=cache_dir,  # type: ignore[arg-type]
                                  local_files_only=local_files_only, token=token)
    return local


def check_save_directory(directory: str | os.PathLike) -> None:
    """``CheckpointError`` in one sentence when ``directory`` (where ``save_pretrained`` writes) exists and
    is not a folder, or when one of its parents is a file."""
    path = Path(directory)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise CheckpointError(f"cannot save to {path}: {p} is a file, and save_pretrained writes a folder; "
                                      "pass a new or existing folder")
            return


def hash_config(config: dict[str, Any]) -> str:
    """Short sha256 of the canonical (sorted-key) JSON of ``config``: what token files record."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class PretrainedMixin:
    """Save/load through one directory format per class; see the module docstring.

    Mixed into an ``nn.Module`` (``class VQGANLC(PretrainedMixin, nn.Module)``): ``from_pretrained``
    loads the weights on the CPU, moves them to ``map_location`` and returns the module in eval mode.
    """

    FORMAT: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]
    HUB_KIND: ClassVar[str] = "vqgan-lc"
    """Which release table rows a name may resolve to (``vqgan_lc.releases``)."""
    READS_VERSIONS: ClassVar[tuple[int, ...]] = ()
    config_class: ClassVar[type[Any]]
    WHAT: ClassVar[str] = "vqgan-lc"
    LOAD_HINT: ClassVar[str] = "pass a directory written by save_pretrained"

    config: Any
    provenance: dict[str, Any]
    """Where the weights came from (conversion, training run, codebook, ...); written to ``config.json``."""

    def record_provenance(self, **entries: Any) -> None:
        """Add entries to ``provenance`` (e.g. ``fine_tuned_from=...``) as a new dict; nothing else changes."""
        self.provenance = {**self.provenance, **entries}

    # ------------------------------------------------------------------ identity
    def config_dict(self) -> dict[str, Any]:
        """What determines the outputs; ``config_hash`` hashes it (default: the config dataclass)."""
        return dict(self.config.to_dict())

    def config_hash(self) -> str:
        """A short hash of ``config_dict()`` (token directories record it to refuse a mismatched model)."""
        return hash_config(self.config_dict())

    # ------------------------------------------------------------------ saving
    def _config_extra(self) -> dict[str, Any]:
        """Top-level ``config.json`` keys besides format, version, config and provenance."""
        return {}

    def _state_to_save(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = self.state_dict()  # type: ignore[attr-defined]
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def push_to_hub(self, repo_id: str, *, token: str | bool | None = None, private: bool = False,
                    report: str | os.PathLike | dict[str, Any] | None = None,
                    commit_message: str = "Upload vqgan-lc model") -> str:
        """Save to a temporary directory, write a model card (with an evaluate ``report``'s numbers when
        given) and upload it to the Hub repo ``repo_id``; returns the commit URL."""
        import tempfile

        from .hub import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            out = self.save_pretrained(Path(tmp) / "model")
            return push_to_hub(out, repo_id, token=token, private=private, report=report,
                               commit_message=commit_message)

    def save_pretrained(self, directory: str | os.PathLike, *, provenance: dict[str, Any] | None = None,
                        push_to_hub: bool = False, repo_id: str | None = None,
                        token: str | bool | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed).

        ``provenance`` replaces ``self.provenance`` in the written file (e.g. a training run's record).
        """
        out = self._write_pretrained(directory, self._state_to_save(), self._config_extra(), provenance)
        return self._after_save(out, push_to_hub=push_to_hub, repo_id=repo_id, token=token)

    def _after_save(self, out: Path, *, push_to_hub: bool, repo_id: str | None, token: str | bool | None) -> Path:
        """With ``push_to_hub``, upload the written directory to ``repo_id`` (with a model card)."""
        if push_to_hub:
            from .errors import VQGANLCError
            from .hub import push_to_hub as push

            if not repo_id:
                raise VQGANLCError("save_pretrained(push_to_hub=True) needs repo_id='org/name'")
            push(out, repo_id, token=token)
        return out

    def _write_pretrained(self, directory: str | os.PathLike, state: dict[str, torch.Tensor], extra: dict[str, Any],
                          provenance: dict[str, Any] | None) -> Path:
        check_save_directory(directory)
        meta = {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "config": self.config.to_dict(),
            **extra,
            "provenance": dict(self.provenance if provenance is None else provenance),
        }
        return save_weights_dir(directory, meta, state)

    # ------------------------------------------------------------------ loading
    def load_state_dict_checked(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """Strict ``load_state_dict`` that names every missing, unexpected or mis-shaped key in one
        ``CheckpointError`` (``source``: the file the weights came from)."""
        problem = state_dict_mismatch(self.state_dict(), state)  # type: ignore[attr-defined]
        if problem:
            raise CheckpointError(f"{source} does not fit this {self.WHAT} config: {problem}")
        self.load_state_dict(state)  # type: ignore[attr-defined]

    @classmethod
    def read_versions(cls) -> tuple[int, ...]:
        """The ``format_version`` values ``from_pretrained`` reads."""
        return cls.READS_VERSIONS or (cls.FORMAT_VERSION,)

    @classmethod
    def from_pretrained(
        cls: type[P],
        path: str | os.PathLike,
        *,
        map_location: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> P:
        """Load ``path`` on ``map_location`` (default CPU), in eval mode.

        ``path``: a directory written by ``save_pretrained`` (it wins when it exists), a Hub repo id
        (``org/name``, our format) or an official release name (``vqgan-lc-f16-100k``: downloaded, converted
        once and cached). ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` mean what they mean in
        huggingface_hub; ``HF_HUB_OFFLINE=1`` uses the caches only.
        """
        directory = _resolve_pretrained(path, kind=cls.HUB_KIND, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only, token=token)
        model = cls._load_pretrained(directory)
        return model.to(map_location or "cpu").eval()  # type: ignore[attr-defined]

    @classmethod
    def _build_loaded(cls: type[P], config: Any, meta: dict[str, Any], directory: Path) -> P:
        """The module for a loaded ``config`` before its weights are copied in (subclasses add options)."""
        return cls(config, provenance=meta.get("provenance") or {})  # type: ignore[call-arg]

    @classmethod
    def _load_pretrained(cls: type[P], directory: Path) -> P:
        """Read a weights directory on the CPU; every problem raises ``CheckpointError`` naming it."""
        meta, config, state, w_path = load_weights_dir(
            directory, cls.FORMAT, cls.read_versions(), cls.config_class.from_dict, what=cls.WHAT,
            hint=cls.LOAD_HINT, upgrade="Upgrade vqgan-lc (pip install -U vqgan-lc) to load it.",
        )
        model = cls._build_loaded(config, meta, directory)
        problem = state_dict_mismatch(model.state_dict(), state)  # type: ignore[attr-defined]
        if problem:
            raise CheckpointError(f"{w_path} does not fit its config.json ({problem})")
        model.load_state_dict(state)  # type: ignore[attr-defined]
        return model


__all__ = ["PretrainedMixin", "check_save_directory", "hash_config"]
