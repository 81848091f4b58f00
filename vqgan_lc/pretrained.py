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
today a local directory; Hub ids and official release names are added there.
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
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local directory that ``path`` names.

    Today only local directories exist, so ``path`` is returned as a ``Path`` (the loader names a missing
    or wrong directory in its own sentence) and the Hub options are unused. This is the one place where
    Hub ids and official release names will be resolved to a cached directory.
    """
    if revision is not None or cache_dir is not None or token is not None:
        log.debug("%s is a local path: revision, cache_dir and token are not used", path)
    return Path(path)


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

    def save_pretrained(self, directory: str | os.PathLike, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed).

        ``provenance`` replaces ``self.provenance`` in the written file (e.g. a training run's record).
        """
        return self._write_pretrained(directory, self._state_to_save(), self._config_extra(), provenance)

    def _write_pretrained(self, directory: str | os.PathLike, state: dict[str, torch.Tensor], extra: dict[str, Any],
                          provenance: dict[str, Any] | None) -> Path:
        meta = {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "config": self.config.to_dict(),
            **extra,
            "provenance": dict(self.provenance if provenance is None else provenance),
        }
        return save_weights_dir(directory, meta, state)

    # ------------------------------------------------------------------ loading
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
        """Load ``path`` (a directory written by ``save_pretrained``), on ``map_location`` (default CPU), in eval mode.

        ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` are for Hub ids and are unused for
        local directories.
        """
        directory = _resolve_pretrained(path, revision=revision, cache_dir=cache_dir,
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


__all__ = ["PretrainedMixin", "hash_config"]
