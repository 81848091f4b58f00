"""Official VQGAN-LC (and taming VQGAN) checkpoints -> a vqgan-lc model directory.

The official release files (``vqgan-lc-100K-f16-dim8.pth``, ...) are pickles of
``{"model": state_dict, "args": argparse.Namespace, "epoch": int}`` (``"state_dict"`` instead of
``"model"`` in the every-10-epochs files). They are read with ``torch.load(weights_only=True)`` and
an allow-list holding only ``argparse.Namespace``, so no other code in the file can run.

Checkpoints of the paper's ablations convert too; the quantizer is inferred from the state dict's
keys and shapes, checked against ``args`` where it records them:

- projector: ``codebook_projection.weight`` -> ``linear`` (``use_cblinear 1``);
  ``codebook_projection.{0,2}.weight`` -> ``mlp`` (``use_cblinear 2``, an ``nn.Sequential`` of
  Linear, ReLU, Linear); no ``codebook_projection.*`` -> ``none`` (``use_cblinear 0``) when the codes
  are 768-d, else the official random-codebook baseline (``tuning_codebook -1`` without a projector:
  kind ``fc``);
- codebook: ``args.tuning_codebook`` 1 (trained k-means) and -1 (trained random rows) give
  ``codebook_trainable``; 0 and -2 (random rows, frozen) a frozen buffer. The codebook is always the
  checkpoint's; a trained one is not compared with the k-means file.
The official EMA quantizer (``quantizer_type ema``: ``tok_embeddings.weight`` the N x D' codes, moved by
the ``cluster_size`` / ``embed_avg`` moving averages, no projector) converts to kind ``ema`` with the
official every-forward update (``ema_update: every_forward``); other quantizer types are refused.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ._io import load_failure_reason
from .codebook import load_codebook
from .config import ModelConfig, Projector
from .errors import CheckpointError, VQGANLCError
from .model import VQGANLC
from .registry import get_config

log = logging.getLogger(__name__)

# Training-only parts of the official state dict: not part of the tokenizer.
_DROPPED_PREFIXES = ("discriminator.", "perceptual_loss.", "loss.")
_RENAMES = {"tok_embeddings.weight": "quantize.codebook"}
_PROJECTION = ("codebook_projection.", "quantize.projection.")
_USE_CBLINEAR = {0: "none", 1: "linear", 2: "mlp"}


def infer_projector(state: dict[str, torch.Tensor], args: dict[str, Any], source: str) -> Projector:
    """``linear`` / ``mlp`` / ``none`` from the official state dict's ``codebook_projection.*`` keys, checked
    against ``args.use_cblinear`` when the checkpoint records it."""
    keys = {k[len(_PROJECTION[0]):] for k in state if k.startswith(_PROJECTION[0])}
    if not keys:
        found: Projector = "none"
    elif keys <= {"weight", "bias"} and "weight" in keys:
        found = "linear"
    elif {"0.weight", "2.weight"} <= keys and keys <= {"0.weight", "0.bias", "2.weight", "2.bias"}:
        found = "mlp"
    else:
        raise CheckpointError(f"{source}: codebook_projection has the keys {sorted(keys)}, neither the linear "
                              "(weight, bias) nor the MLP (0.*, 2.*) projector of the official code")
    if "use_cblinear" in args:
        said = _USE_CBLINEAR.get(int(args["use_cblinear"]))
        if said != found:
            raise CheckpointError(f"{source}: args.use_cblinear={args['use_cblinear']} means a {said} projector, but "
                                  f"the weights hold a {found} one; the file is inconsistent")
    return found
_DDCONFIG_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution",
                  "in_channels", "out_ch", "dropout")


def load_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official ``.pth``: returns ``(state_dict, args as a dict)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds
        first = load_failure_reason(e)
        raise CheckpointError(
            f"{path} cannot be read safely as an official VQGAN-LC checkpoint: {first}. Only tensors, plain "
            "containers and argparse.Namespace are allowed; a file needing other classes is refused."
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict with a 'model' entry")
    state = obj.get("model", obj.get("state_dict"))
    if state is None and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} has no 'model' or 'state_dict' entry (keys: {sorted(obj)[:8]})")
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return state, args


def _build_converted(checkpoint: str | os.PathLike, config: ModelConfig, args: dict[str, Any],
                     state: dict[str, torch.Tensor], **provenance: Any) -> VQGANLC:
    """A ``VQGANLC`` of ``config`` holding ``state`` (fp16 tensors as fp32), its provenance naming the
    checkpoint and the official run's scalar ``args``; in eval mode."""
    record = {"converted_from": Path(checkpoint).name,
              "official_args": {k: v for k, v in args.items() if isinstance(v, (int, float, str, bool))}, **provenance}
    model = VQGANLC(config, provenance=record)
    model.load_state_dict_checked({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                  source=str(checkpoint))
    return model.eval()


def _convert_random_baseline(checkpoint: str | os.PathLike, ours: dict[str, torch.Tensor], args: dict[str, Any],
                             config: ModelConfig, embed_dim: int) -> VQGANLC:
    """The official random trainable codebook without a projector (``tuning_codebook -1``): kind ``fc``."""
    cb = ours.pop("quantize.codebook")
    ours["quantize.embedding"] = cb
    config = config.replace(embed_dim=embed_dim, quantizer={"kind": "fc", "codebook_size": int(cb.shape[0]),
                                                             "projector": "linear", "codebook_trainable": False})
    log.info("%s: a random trainable %d x %d codebook without projector, converted as the 'fc' baseline",
             checkpoint, cb.shape[0], cb.shape[1])
    return _build_converted(checkpoint, config, args, ours)


def _convert_ema(checkpoint: str | os.PathLike, state: dict[str, torch.Tensor], args: dict[str, Any],
                 config: ModelConfig, embed_dim: int | None) -> VQGANLC:
    """The official EMA baseline (``quantizer_type ema``): the N x D' codes and their two moving averages."""
    need = ("tok_embeddings.weight", "cluster_size", "embed_avg")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{checkpoint} is an EMA checkpoint without {', '.join(missing)}; the file is incomplete")
    if any(k.startswith(_PROJECTION[0]) for k in state):
        raise CheckpointError(f"{checkpoint}: an EMA quantizer with a codebook projector moves codes that the search "
                              "does not use; only the official EMA baseline without a projector (use_cblinear 0) converts")
    cb = state["tok_embeddings.weight"]
    n, d = int(cb.shape[0]), int(cb.shape[1])
    if embed_dim is None:
        embed_dim = int(args.get("embed_dim", d))
    if embed_dim != d or tuple(state["embed_avg"].shape) != (n, d) or tuple(state["cluster_size"].shape) != (n,):
        raise CheckpointError(f"{checkpoint}: the EMA codes are {n} x {d}, embed_avg {tuple(state['embed_avg'].shape)}, "
                              f"cluster_size {tuple(state['cluster_size'].shape)} and embed_dim {embed_dim}; they must "
                              "agree (N x D', N x D', N)")
    renames = {"tok_embeddings.weight": "quantize.embedding", "cluster_size": "quantize.cluster_size",
               "embed_avg": "quantize.embed_avg"}
    ours = {renames.get(k, k): v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    config = config.replace(embed_dim=embed_dim, quantizer={"kind": "ema", "codebook_size": n,
                                                             "ema_update": "every_forward"})
    log.info("%s: the official EMA baseline, %d x %d codes (updated in every forward, as the official code)",
             checkpoint, n, d)
    return _build_converted(checkpoint, config, args, ours)


def config_from_yaml(path: str | os.PathLike) -> ModelConfig:
    """The architecture from an official ``vq_config.yaml`` (``model.params.{embed_dim, ddconfig}``)."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover
        raise CheckpointError("reading a YAML config needs PyYAML: pip install pyyaml (or pass --preset)") from e
    if not Path(path).is_file():
        raise CheckpointError(f"config {path} does not exist; pass the official vq_config.yaml or use --preset")
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not valid YAML ({first}); pass the official vq_config.yaml or use --preset") from e
    try:
        params = doc["model"]["params"]
        dd = params["ddconfig"]
        if not isinstance(dd, dict):
            raise TypeError("ddconfig is not a mapping")
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not an official VQGAN config (needs model.params.ddconfig); pass the "
                              "official vq_config.yaml or use --preset") from e
    if dd.get("double_z"):
        raise CheckpointError(f"{path}: double_z=true is a KL autoencoder, not a VQGAN")
    try:
        return ModelConfig(embed_dim=int(params.get("embed_dim", 8)), **{k: dd[k] for k in _DDCONFIG_KEYS if k in dd})
    except VQGANLCError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: model.params holds a value of the wrong type or range ({e}); compare it with "
                              "the official vq_config.yaml or use --preset") from e


def convert_official(
    checkpoint: str | os.PathLike,
    *,
    codebook: str | os.PathLike | None = None,
    config: ModelConfig | None = None,
    yaml_config: str | os.PathLike | None = None,
    preset: str | None = None,
    embed_dim: int | None = None,
) -> VQGANLC:
    """Build a ``VQGANLC`` holding an official checkpoint's weights.

    Exactly one of ``config``, ``yaml_config`` and ``preset`` gives the encoder/decoder architecture.
    ``embed_dim`` (D') defaults to the checkpoint's ``args.embed_dim`` (the official code takes it from
    the command line, not the YAML). ``codebook`` is the k-means file the model was trained with
    (``codebook-100K.pth``); the frozen codebook inside the checkpoint must equal it.
    """
    if sum(x is not None for x in (config, yaml_config, preset)) != 1:
        raise ValueError("give exactly one of config, yaml_config, preset")
    state, args = load_official_checkpoint(checkpoint)
    if config is None:
        config = config_from_yaml(yaml_config) if yaml_config is not None else get_config(preset)  # type: ignore[arg-type]

    qtype = str(args.get("quantizer_type", "org"))
    if qtype == "ema" or "cluster_size" in state:
        return _convert_ema(checkpoint, state, args, config, embed_dim)
    if qtype != "org":
        raise CheckpointError(f"{checkpoint} uses quantizer_type={args['quantizer_type']!r}; only the LC quantizer ('org'), "
                              "its ablations and the EMA baseline ('ema') convert")
    projector = infer_projector(state, args, str(checkpoint))
    tuning = int(args.get("tuning_codebook", 0))
    if tuning not in (-2, -1, 0, 1):
        raise CheckpointError(f"{checkpoint}: args.tuning_codebook={tuning} is none of the official modes -2, -1, 0, 1")
    trained_codebook = tuning in (-1, 1)

    ours: dict[str, torch.Tensor] = {}
    dropped = 0
    for k, v in state.items():
        if k.startswith(_DROPPED_PREFIXES):
            dropped += 1
            continue
        if k.startswith(_PROJECTION[0]):
            k = _PROJECTION[1] + k[len(_PROJECTION[0]):]
        ours[_RENAMES.get(k, k)] = v
    log.info("dropped %d training-only tensors (discriminator, perceptual loss)", dropped)

    cb = ours.get("quantize.codebook")
    if projector == "none":
        if cb is None:
            raise CheckpointError(f"{checkpoint} has neither codebook_projection.* nor tok_embeddings.weight: not a "
                                  "VQGAN-LC checkpoint")
        proj_dim = cb_dim = int(cb.shape[1])
    else:
        last = "quantize.projection.weight" if projector == "linear" else "quantize.projection.2.weight"
        first = "quantize.projection.weight" if projector == "linear" else "quantize.projection.0.weight"
        proj_dim, cb_dim = int(ours[last].shape[0]), int(ours[first].shape[1])
    ckpt_embed = args.get("embed_dim")
    if embed_dim is None:
        embed_dim = int(ckpt_embed) if ckpt_embed is not None else int(proj_dim)
    if embed_dim != proj_dim:
        what = f"projector, which maps {cb_dim} -> {proj_dim}" if projector != "none" else f"{proj_dim}-d codes"
        raise CheckpointError(f"embed_dim {embed_dim} does not match the checkpoint's {what}; pass --embed-dim {proj_dim}")
    if projector == "none" and (tuning == -1 or cb_dim != 768):
        return _convert_random_baseline(checkpoint, ours, args, config, embed_dim)

    if codebook is not None and trained_codebook and cb is not None:
        given = load_codebook(codebook).vectors
        if tuple(given.shape) != tuple(cb.shape):
            raise CheckpointError(f"codebook {codebook} is {tuple(given.shape)} but the checkpoint's trained codebook is "
                                  f"{tuple(cb.shape)}; pass the file it started from, or none")
        log.info("args.tuning_codebook=%d: the codebook was trained; the checkpoint's rows are used, not %s",
                 tuning, codebook)
    elif codebook is not None:
        given = load_codebook(codebook).vectors
        if cb is None:
            ours["quantize.codebook"] = cb = given
        elif tuple(given.shape) != tuple(cb.shape):
            raise CheckpointError(
                f"codebook {codebook} is {tuple(given.shape)} but the checkpoint was trained with a {tuple(cb.shape)} "
                "codebook; pass the codebook file of the same release"
            )
        elif not torch.equal(given.float(), cb.float()):
            raise CheckpointError(
                f"codebook {codebook} has the checkpoint's shape but different values; the rows of a "
                "k-means codebook are not interchangeable, pass the file the model was trained with (a "
                "checkpoint trained with --tuning_codebook 1 records it in its args)"
            )
    if cb is None:
        raise CheckpointError(f"{checkpoint} stores no tok_embeddings.weight; pass the codebook file with --codebook")
    n_codes = int(cb.shape[0])
    if args.get("n_vision_words") not in (None, n_codes):
        log.info("args.n_vision_words=%s is overridden by the codebook's %d rows (as in the official code)",
                 args.get("n_vision_words"), n_codes)

    config = config.replace(embed_dim=embed_dim, quantizer={"kind": "lc", "codebook_size": n_codes,
                                                             "codebook_dim": int(cb.shape[1]), "projector": projector,
                                                             "codebook_trainable": trained_codebook})
    return _build_converted(checkpoint, config, args, ours,
                            codebook_file=Path(codebook).name if codebook is not None else None)
