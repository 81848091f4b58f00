"""Typed, frozen architecture configs: what is saved in ``config.json`` next to the weights.

Training knobs (learning rate, loss weights of the GAN, ...) live in ``vqgan_lc.train``; only what is
needed to rebuild the network and reproduce its numbers lives here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

QuantizerKind = Literal["lc", "vq", "fc", "fc-cosine", "ema"]
Distance = Literal["euclidean", "cosine"]
EMAUpdate = Literal["training", "every_forward"]
Projector = Literal["linear", "mlp", "none"]
_PROJECTORS = ("linear", "mlp", "none")

_QUANTIZER_KINDS = ("lc", "vq", "fc", "fc-cosine", "ema")
_EMA_UPDATES = ("training", "every_forward")
_DISTANCES = ("euclidean", "cosine")


def check_fields(cls: type, d: dict[str, Any], what: str, hint: str = "") -> None:
    """Raise ``ValueError`` naming the keys of ``d`` that are not fields of the dataclass ``cls``
    (``what`` names the config in the sentence, ``hint`` is appended), and ``ConfigError`` naming the
    first value of a plain field (int, float, str, bool, a Literal, a list/tuple, or None where allowed)
    that is of the wrong type (``lr: abc``), instead of a ``TypeError`` from inside the code."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))}){hint}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved: nothing to check against
        return
    for key, value in d.items():
        expected = _type_mismatch(hints.get(key), value)
        if expected is not None:
            raise ConfigError(f"{what} field {key!r} has the wrong type ({type(value).__name__} {value!r}; expected "
                              f"{expected}); fix the value")


def _type_mismatch(hint: Any, value: Any) -> str | None:
    """What ``hint`` expects when ``value`` does not fit it (None: it fits, or the hint is not a plain one)."""
    if hint is None or hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_type_mismatch(a, value) for a in args]
        if any(r is None for r in results):
            return None
        return " or ".join(r for r in results if r)
    if hint is type(None):
        return None if value is None else "null"
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list) or hint in (tuple, list):
        return None if isinstance(value, (list, tuple)) else "a list"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        ok = (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) and not isinstance(value, bool)
        return None if ok else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None  # nested configs, dicts, classes: checked by their own code


# What a baseline fixes: the official VQGAN-FC searches by Euclidean distance, the fc-cosine variant
# searches unit vectors; VQGAN-EMA moves its codes by moving averages, so it has no codebook loss. A
# config of that kind must say so (or leave the field out).
_KIND_FIXED: dict[str, dict[str, Any]] = {
    "fc": {"distance": "euclidean"},
    "fc-cosine": {"distance": "cosine"},
    "ema": {"codebook_weight": 0.0},
}
_FIELD_DEFAULTS: dict[str, Any] = {"distance": "euclidean", "codebook_weight": 0.33}


def _kind_default(kind: str, name: str) -> Any:
    return _KIND_FIXED.get(kind, {}).get(name, _FIELD_DEFAULTS[name])


@dataclass(frozen=True)
class QuantizerConfig:
    """The quantizer: which kind and its numerics.

    kind:
        ``lc``  -- VQGAN-LC: frozen ``codebook_size x codebook_dim`` codebook (k-means centres of a
                   pretrained extractor's features) and a trainable ``Linear(codebook_dim -> embed_dim)``.
        ``vq``  -- taming VQGAN: trainable ``codebook_size x embed_dim`` codebook, uniform(+-1/N) init.
        ``fc``  -- VQGAN-FC as the official code builds it: a random trainable ``codebook_size x
                   embed_dim`` codebook of small D', uniform(+-1/N) init, Euclidean search.
        ``fc-cosine`` -- factorised codes with latents and codes L2-normalised, ``N(0, 1)`` init
                   (``distance`` must be ``cosine``); the variant this package shipped as ``fc`` before. A saved
                   config with ``kind: fc, distance: cosine`` loads as this kind.
        ``ema`` -- VQGAN-EMA: codebook updated by exponential moving averages, Laplace-smoothed
                   (``codebook_weight`` must be 0.0: no gradient trains the codes), uniform(+-1/N)
                   init as the official code.
    projector, codebook_trainable (``lc`` only; the paper's ablations, official ``--use_cblinear`` /
        ``--tuning_codebook``): ``linear`` (default) ``Linear(codebook_dim -> D')``; ``mlp`` Linear ->
        256 -> ReLU -> Linear; ``none``: no projector, D' must equal ``codebook_dim`` and only the latent is
        L2-normalised (the official 768-d mode). ``codebook_trainable`` makes the k-means codebook a
        trained parameter (Table 10) instead of a frozen buffer.
    ema_update:
        ``training`` (default) updates the EMA codes in training forwards only; ``every_forward``
        is the official behaviour (evaluation forwards and the discriminator step's re-forward
        update them too).
    distance:
        ``euclidean`` is what the official code does (squared L2 on the projected 8-d vectors);
        ``cosine`` L2-normalises both sides first, as the paper's text says.
    distance, codebook_weight:
        left out (``None``), they take the kind's value: ``cosine`` for ``fc-cosine``, 0.0 for ``ema``,
        otherwise ``euclidean`` and 0.33. After construction they are never ``None``. A value that
        contradicts the kind raises ``ConfigError``.
    """

    kind: QuantizerKind = "lc"
    codebook_size: int = 100_000
    codebook_dim: int = 768
    distance: Distance | None = None
    commit_weight: float = 1.0
    codebook_weight: float | None = None
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    ema_update: EMAUpdate = "training"
    projector: Projector = "linear"
    codebook_trainable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _QUANTIZER_KINDS:
            raise ConfigError(f"quantizer kind must be one of {_QUANTIZER_KINDS}, got {self.kind!r}")
        for name in _FIELD_DEFAULTS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, _kind_default(self.kind, name))
        if self.distance not in _DISTANCES:
            raise ConfigError(f"distance must be one of {_DISTANCES}, got {self.distance!r}")
        for name, value in _KIND_FIXED.get(self.kind, {}).items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"the {self.kind!r} quantizer needs {name}={value!r}, got {getattr(self, name)!r}; "
                    f"set {name} to {value!r} or leave it out"
                )
        if self.codebook_size < 1 or self.codebook_dim < 1:
            raise ConfigError("codebook_size and codebook_dim must be positive")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_update not in _EMA_UPDATES:
            raise ConfigError(f"ema_update must be one of {_EMA_UPDATES}, got {self.ema_update!r}")
        if self.projector not in _PROJECTORS:
            raise ConfigError(f"projector must be one of {_PROJECTORS}, got {self.projector!r}")
        if self.kind != "lc" and (self.projector != "linear" or self.codebook_trainable):
            raise ConfigError(f"projector and codebook_trainable are switches of the 'lc' quantizer; the "
                              f"{self.kind!r} baseline has neither, leave them out")

    def replace(self, **changes: Any) -> QuantizerConfig:
        """A copy with fields changed. A new ``kind`` brings its own ``distance``/``codebook_weight``
        where the old value was only the old kind's default and the change does not name it."""
        kind = changes.get("kind", self.kind)
        if kind != self.kind:
            for name in _FIELD_DEFAULTS:
                if name not in changes and getattr(self, name) == _kind_default(self.kind, name):
                    changes[name] = None
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VQGAN-LC model (taming encoder/decoder + quantizer).

    ``embed_dim`` is D', the dimension of the quantized latent (8 for the paper's f16 model).
    ``ch_mult`` has one entry per resolution level; the downsampling factor is ``2 ** (len - 1)``.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    embed_dim: int = 8
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        # Accept lists (JSON, YAML) and store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if isinstance(self.quantizer, dict):
            object.__setattr__(self, "quantizer", QuantizerConfig(**self.quantizer))
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError("every channel count must be a multiple of 32 (GroupNorm with 32 groups)")
        if not self.ch_mult or self.num_res_blocks < 1 or self.embed_dim < 1:
            raise ValueError("ch_mult must be non-empty; num_res_blocks and embed_dim must be positive")
        q = self.quantizer
        if q.kind == "lc" and q.projector == "none" and self.embed_dim != q.codebook_dim:
            raise ConfigError(f"projector 'none' uses the codes as they are, so embed_dim must equal codebook_dim "
                              f"({q.codebook_dim}), got {self.embed_dim}; set embed_dim to {q.codebook_dim}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        newer = "; is the file from a newer vqgan-lc?"
        check_fields(cls, d, "model config", newer)
        d = dict(d)
        if "quantizer" in d and isinstance(d["quantizer"], dict):
            check_fields(QuantizerConfig, d["quantizer"], "quantizer config", newer)
            q = dict(d["quantizer"])
            if q.get("kind") == "fc" and q.get("distance") == "cosine":
                q["kind"] = "fc-cosine"  # saved before 'fc' became the official Euclidean baseline
            d["quantizer"] = QuantizerConfig(**q)
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with fields changed; ``quantizer`` may be a dict of quantizer fields to change."""
        q = changes.pop("quantizer", None)
        if isinstance(q, dict):
            changes["quantizer"] = self.quantizer.replace(**q)
        elif q is not None:
            changes["quantizer"] = q
        return dataclasses.replace(self, **changes)
