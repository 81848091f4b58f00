"""Building the tokenizer to train, framework-free: ``build_model(ModelSpec(...))``.

``registry.create_model`` builds a preset with random weights; ``build_model`` adds the training
policy on top: a preset or a full config, field overrides, the baseline quantizers, the frozen
codebook file of the ``lc`` quantizer (optionally centred and rescaled) or a model directory to
fine-tune. ``VQGANLCModule`` calls it; nothing here imports Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .codebook import load_codebook
from .config import ModelConfig, QuantizerKind
from .errors import CheckpointError, CodebookError, ConfigError
from .model import VQGANLC
from .registry import get_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Which tokenizer to train (the ``model`` group of ``VQGANLCModule``).

    preset: a registry name (``tiny``, ``vqgan-lc-f16-100k``, ``vqgan-lc-f8-100k``, ...).
    config: a full ``ModelConfig`` dict instead of a preset.
    overrides: fields changed on the preset/config (``quantizer`` may be a dict of its fields).
    quantizer: ``lc`` (VQGAN-LC), ``vq`` (taming), ``fc`` (the official random trainable codebook,
        U(+-1/N), Euclidean), ``fc-cosine`` (L2-normalised factorised codes), ``ema`` (U(+-1/N), moving
        averages); default the preset's (``lc``).
    codebook_size: codebook size of the ``vq``/``fc``/``ema`` baselines (``lc`` takes it from the file).
    codebook: the frozen codebook file of the ``lc`` quantizer (ours ``.safetensors`` or the official
        ``codebook-100K.pth``); required for ``lc`` unless ``init_from`` is given.
    codebook_std: None (official): the codebook as in the file. A number: centre the codebook and
        scale it to this standard deviation (the model keeps the rescaled codebook; ignored with
        ``init_from``). Since the projector is linear this only changes its effective
        initialisation; it rescues codebooks whose features are far larger than the encoder's initial
        latents (pixel patches: with the official init every latent then picks the same code).
    init_from: a model directory (``save_pretrained`` / ``vqgan-lc convert``, full export) to
        fine-tune; its architecture and codebook are kept.
    codebook_init: ``file`` (default: the k-means ``codebook``) or ``random``: a frozen random
        ``codebook_size x codebook_dim`` codebook, uniform(-1/N, 1/N), seeded by ``codebook_seed``, with
        the projector (the paper's Table 6 "random init" ablation, official ``--tuning_codebook -2``;
        the uniform(+-1/N) draw is that of the official random codebooks). Combine with the quantizer
        switches ``projector`` / ``codebook_trainable`` through ``overrides``.
    """

    preset: str = "vqgan-lc-f16-100k"
    config: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    quantizer: QuantizerKind | None = None
    codebook_size: int | None = None
    codebook: str | None = None
    codebook_std: float | None = None
    init_from: str | None = None
    codebook_init: Literal["file", "random"] = "file"
    codebook_seed: int = 0


def build_model(spec: ModelSpec) -> VQGANLC:
    """The tokenizer ``spec`` asks for, in training mode (random weights unless ``init_from``)."""
    if spec.init_from is not None:
        return _fine_tune(spec)
    if spec.config is not None:
        cfg = ModelConfig.from_dict(dict(spec.config))
    else:
        try:
            cfg = get_config(spec.preset)
        except KeyError as e:
            raise ConfigError(str(e.args[0]) if e.args else str(e)) from None
    if spec.overrides:
        cfg = cfg.replace(**dict(spec.overrides))
    if spec.quantizer is not None:
        cfg = cfg.replace(quantizer={"kind": spec.quantizer})
    if spec.codebook_init not in ("file", "random"):
        raise ConfigError(f"codebook_init must be 'file' or 'random', got {spec.codebook_init!r}")
    if spec.codebook_init == "random":
        return _random_codebook(spec, cfg)
    if spec.codebook_size is not None:
        if cfg.quantizer.kind == "lc":
            raise ConfigError("the 'lc' codebook size comes from the codebook file; drop --model.model.codebook_size")
        cfg = cfg.replace(quantizer={"codebook_size": spec.codebook_size})
    if cfg.quantizer.kind != "lc":
        if spec.codebook is not None:
            raise CodebookError(
                f"--model.model.codebook is only used by the 'lc' quantizer; the {cfg.quantizer.kind!r} baseline "
                "learns its codebook"
            )
        return VQGANLC(cfg)
    if spec.codebook is None:
        raise CodebookError(
            "the 'lc' quantizer needs its frozen codebook: pass --model.model.codebook FILE (made by "
            "`vqgan-lc build-codebook`, or the official codebook-100K.pth), or fine-tune a model "
            "directory with --init-from DIR"
        )
    cb = load_codebook(spec.codebook)
    vectors, prov = cb.vectors, {"file": Path(spec.codebook).name, **cb.provenance}
    if spec.codebook_std is not None:
        if spec.codebook_std <= 0:
            raise ConfigError(f"codebook_std must be > 0, got {spec.codebook_std}")
        centred = vectors - vectors.mean(0, keepdim=True)
        vectors = centred * (spec.codebook_std / centred.std().clamp_min(1e-12))
        prov["rescaled"] = {"centred": True, "std": spec.codebook_std}
        log.info("codebook centred and scaled to std %g (--model.model.codebook_std)", spec.codebook_std)
    model = VQGANLC.from_config(cfg, codebook=vectors, provenance={"codebook": prov})
    return model


def _random_codebook(spec: ModelSpec, cfg: ModelConfig) -> VQGANLC:
    if cfg.quantizer.kind != "lc" or spec.codebook is not None:
        raise ConfigError("codebook_init 'random' is the 'lc' quantizer with random frozen rows instead of a "
                          "codebook file; drop --model.model.codebook and use --model.model.quantizer lc")
    n = spec.codebook_size or cfg.quantizer.codebook_size
    g = torch.Generator().manual_seed(spec.codebook_seed)
    vectors = (torch.rand(n, cfg.quantizer.codebook_dim, generator=g) * 2 - 1) / n
    prov = {"random": {"init": "uniform(-1/N, 1/N)", "seed": spec.codebook_seed}}
    log.info("random frozen %d x %d codebook (codebook_init=random, seed %d)", n, cfg.quantizer.codebook_dim,
             spec.codebook_seed)
    return VQGANLC.from_config(cfg, codebook=vectors, provenance={"codebook": prov})


def _fine_tune(spec: ModelSpec) -> VQGANLC:
    assert spec.init_from is not None
    if spec.codebook is not None:
        raise CodebookError(
            "give either --model.model.init_from (a model directory, which keeps its own codebook) "
            "or --model.model.codebook, not both"
        )
    if spec.config is not None or spec.overrides or spec.codebook_size is not None or spec.codebook_init != "file":
        raise ConfigError("--model.model.init_from fixes the architecture; drop config, overrides and codebook_size")
    if spec.codebook_std is not None:
        log.warning("codebook_std=%g ignored: %s keeps the codebook it was trained with",
                    spec.codebook_std, spec.init_from)
    model = VQGANLC.from_pretrained(spec.init_from)
    if model.inference_only:
        raise CheckpointError(
            f"{spec.init_from} is an inference-only export (projected codes only); fine-tuning needs the "
            "full export with the raw codebook and projector (save_pretrained without inference_only, "
            "or `vqgan-lc convert` without --inference-only)"
        )
    if spec.quantizer is not None and spec.quantizer != model.config.quantizer.kind:
        raise ConfigError(f"{spec.init_from} has a {model.config.quantizer.kind!r} quantizer, not {spec.quantizer!r}; "
                          "drop --model.model.quantizer")
    model.record_provenance(fine_tuned_from=str(spec.init_from))
    log.info("fine-tuning %s (%s quantizer, %d codes)", spec.init_from, model.config.quantizer.kind,
             model.codebook_size)
    return model.train()


__all__ = ["ModelSpec", "build_model"]
