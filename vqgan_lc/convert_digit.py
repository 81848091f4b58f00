"""DiGIT's released fairseq checkpoints (stage-1 GPT, stage-2 AR and NAR GPTs) -> vqgan-lc directories.

What a DiGIT ``checkpoint_*.pt`` holds (fairseq ``TransformerDecoder`` inside ``stlm`` / ``st2vtlm``):

* ``decoder.embed_tokens.weight``: one table. Stage 1: the target dictionary (5 specials ``<s> <pad>
  </s> <unk> <n>`` then the K DiGIT ids), plus 1000 class rows after it for the class-conditional
  model. Stage 2: the VQ dictionary (5 specials + the pixel tokenizer's ids), then the DiGIT dictionary
  (5 specials + K ids) for the prefix.
* ``decoder.embed_positions.weight`` (and ``embed_positions_1`` for the stage-2 prefix): learned
  positions whose first usable row is 2 (``padding_idx + 1``).
* ``decoder.layers.N.self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
  ``final_layer_norm``; ``decoder.layer_norm`` only for pre-LN (stage 2); ``decoder.output_projection``
  over the target dictionary.
* ``centroids`` (d, K), ``centroid_norm`` and ``pretrained_encoder.*`` (the frozen DINOv2): the tokenizer.

The mapping: q/k/v are concatenated into ``qkv``; image ids drop the 5 specials; the EOS row (id 2),
fairseq's BOS, becomes the start (null) token of an unconditional GPT and the EOS output becomes the
extra ``eos_target`` logit; class rows become class tokens; positional rows start at 2; fp16 -> fp32.
The network keeps fairseq's semantics (``norm_position``, ``embed_scale=True``, ``eos_target=True``).

The NAR (MaskGIT) stage 2 (``st2vtlm_nar``, ``model_nar.py``) has the stage-2 AR layout, run without the
causal mask: input ``[prefix; EOS; VQ ids with masked positions = <unk> (id 3)]``, the prefix on
``embed_positions_1`` and ``[EOS; VQ]`` on ``embed_positions`` (both from row 2), and the logit at
``[EOS; VQ]`` position ``1 + i`` predicts VQ id ``i`` (no EOS target; the specials are never sampled).
It becomes ``GPTConfig(attention="bidirectional")``: EOS -> the start (null) token, ``<unk>`` -> the
``[MASK]`` row, the head without the specials. The weights alone do not tell NAR from AR (same keys and
shapes): ``stage="auto"`` reads the model name in ``cfg`` (``..._nar``); pass ``stage="stage2-nar"`` for a
file without it.

Files are read with ``torch.load(weights_only=True)`` and no extra allowed globals: tensors and plain
containers (dict, list, tuple, OrderedDict, numbers, strings) only. fairseq's trainer stores ``cfg`` as
a plain container (``OmegaConf.to_container``); a file that pickles other objects (an
``argparse.Namespace`` in ``args``, an omegaconf ``DictConfig``) is refused with the class it needs.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ._io import load_failure_reason
from .errors import CheckpointError
from .generate.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)

FAIRSEQ_NSPECIAL = 5  # <s>, <pad>, </s>, <unk> and DiGIT's extra "<n>"
FAIRSEQ_EOS = 2
FAIRSEQ_UNK = 3  # the mask token of DiGIT's NAR stage 2
FAIRSEQ_POS_OFFSET = 2  # padding_idx (1) + 1: the first row a learned position uses
DIGIT_CLASSES = 1000

Stage = Literal["auto", "stage1", "stage2", "stage2-nar"]
ConvertedStage = Literal["stage1", "stage2", "stage2-nar"]
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.")


@dataclass
class DigitConversion:
    """The result of ``convert_digit``: the GPT and what the checkpoint holds of the tokenizer."""

    gpt: GPT
    stage: ConvertedStage
    centroids: torch.Tensor | None  # (K, d) float32
    encoder_state: dict[str, torch.Tensor] | None  # the DINOv2 weights (``pretrained_encoder.`` stripped)


def load_fairseq_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a fairseq checkpoint safely: returns ``(model state dict, cfg as a plain dict or {})``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the DiGIT checkpoint_*.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds
        first = load_failure_reason(e)
        try:  # name what the pickle needs, without running it
            needed = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or first
        except Exception:  # noqa: BLE001 - not a zip checkpoint: keep torch's message
            needed = first
        raise CheckpointError(
            f"{path} cannot be read safely as a DiGIT fairseq checkpoint (it needs {needed}); only tensors and "
            "plain containers are allowed, so re-save it with its 'model' state dict and a plain 'cfg' dict."
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a fairseq checkpoint dict; pass checkpoint_*.pt")
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not any(k.startswith("decoder.") for k in state):
        raise CheckpointError(f"{path} has no fairseq decoder weights ('model' with decoder.* keys); "
                              "pass a DiGIT stage-1 or stage-2 checkpoint")
    cfg = obj.get("cfg") or {}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, cfg if isinstance(cfg, dict) else {}


def _cfg_heads(cfg: dict[str, Any]) -> int | None:
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else cfg
    for key in ("decoder_attention_heads",):
        if isinstance(model, dict) and isinstance(model.get(key), int):
            return int(model[key])
    return None


def _cfg_model_name(cfg: dict[str, Any]) -> str:
    model = cfg.get("model")
    return str(model.get("_name", "")) if isinstance(model, dict) else ""


def _get(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"the checkpoint lacks {key}; it is not a DiGIT fairseq decoder checkpoint")
    return state[key].float()


def _positions(table: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if table.shape[0] < FAIRSEQ_POS_OFFSET + n:
        raise CheckpointError(f"{what} has {table.shape[0]} rows; {FAIRSEQ_POS_OFFSET + n} are needed for {n} positions")
    return table[FAIRSEQ_POS_OFFSET : FAIRSEQ_POS_OFFSET + n]


def convert_digit(path: str | os.PathLike, *, stage: Stage = "auto", n_head: int | None = None,
                  grid: tuple[int, int] = (16, 16), prefix_grid: tuple[int, int] = (16, 16),
                  dropout: float = 0.1) -> DigitConversion:
    """A DiGIT fairseq checkpoint -> ``DigitConversion`` (a GPT plus the tokenizer's centroids / DINOv2).

    ``n_head`` is read from the checkpoint's ``cfg`` (``decoder_attention_heads``) unless given; the
    shapes give everything else. ``stage="auto"`` picks stage 2 when a prefix position table exists, and
    its NAR (MaskGIT) variant when the ``cfg`` model name ends in ``_nar`` (``st2vtlm_nar``).
    """
    state, cfg = load_fairseq_checkpoint(path)
    is_stage2 = "decoder.embed_positions_1.weight" in state
    named_nar = _cfg_model_name(cfg).endswith("_nar")
    if stage == "auto":
        stage = ("stage2-nar" if named_nar else "stage2") if is_stage2 else "stage1"
    if (stage != "stage1") != is_stage2:
        raise CheckpointError(f"{path} is a DiGIT {'stage-2' if is_stage2 else 'stage-1'} checkpoint, not {stage}; "
                              "drop --stage or pass the matching file")
    if named_nar and stage != "stage2-nar":
        raise CheckpointError(f"{path} is DiGIT's NAR (MaskGIT) stage 2 ({_cfg_model_name(cfg)}), not {stage}; "
                              "drop --stage or pass --stage stage2-nar")
    nar = stage == "stage2-nar"
    heads = n_head or _cfg_heads(cfg)
    if heads is None:
        raise CheckpointError(f"{path} does not record decoder_attention_heads in its cfg; pass --n-head (16 for DiGIT base)")

    emb = _get(state, "decoder.embed_tokens.weight")
    out = _get(state, "decoder.output_projection.weight")
    d = emb.shape[1]
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER_RE.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: decoder layers are missing or not numbered 0..N-1")
    pre_ln = "decoder.layer_norm.weight" in state
    n_target = out.shape[0] - FAIRSEQ_NSPECIAL  # image ids the head predicts
    seq_len = grid[0] * grid[1]
    fc1 = _get(state, "decoder.layers.0.fc1.weight")

    new: dict[str, torch.Tensor] = {}
    eos_row = emb[FAIRSEQ_EOS : FAIRSEQ_EOS + 1]
    image_rows = emb[FAIRSEQ_NSPECIAL : out.shape[0]]
    kwargs: dict[str, Any] = {}
    if stage == "stage1":
        extra = emb.shape[0] - out.shape[0]
        if extra not in (0, DIGIT_CLASSES):
            raise CheckpointError(f"{path}: the embedding has {extra} rows beyond the dictionary; expected 0 or 1000 classes")
        if extra:  # class token cls + len(dict) replaces BOS at position 0; no null class
            new["tok_emb.weight"] = torch.cat([image_rows, emb[out.shape[0]:]])
            kwargs.update(n_classes=DIGIT_CLASSES, null_class=False)
        else:  # EOS as BOS = the start (null) token
            new["tok_emb.weight"] = torch.cat([image_rows, eos_row])
    else:
        prefix_rows = emb[out.shape[0] + FAIRSEQ_NSPECIAL :]
        # EOS (fairseq's BOS) = the start token; NAR: <unk> (the mask token) = the [MASK] row after it
        new["tok_emb.weight"] = torch.cat([image_rows, eos_row] + ([emb[FAIRSEQ_UNK : FAIRSEQ_UNK + 1]] if nar else []))
        new["prefix_emb.weight"] = prefix_rows
        new["prefix_pos_emb"] = _positions(_get(state, "decoder.embed_positions_1.weight"), prefix_grid[0] * prefix_grid[1],
                                           "decoder.embed_positions_1")[None]
        kwargs.update(prefix_vocab=prefix_rows.shape[0], prefix_grid=prefix_grid)
        if nar:
            kwargs.update(attention="bidirectional")
    new["pos_emb"] = _positions(_get(state, "decoder.embed_positions.weight"), seq_len + 1, "decoder.embed_positions")[None]
    # NAR has no EOS target; its head covers the image ids only
    new["head.weight"] = out[FAIRSEQ_NSPECIAL:] if nar else torch.cat([out[FAIRSEQ_NSPECIAL:], out[FAIRSEQ_EOS : FAIRSEQ_EOS + 1]])
    if pre_ln:
        new["ln_f.weight"] = _get(state, "decoder.layer_norm.weight")
        new["ln_f.bias"] = _get(state, "decoder.layer_norm.bias")
    for i in layers:
        src = f"decoder.layers.{i}."
        dst = f"blocks.{i}."
        for p in ("weight", "bias"):
            new[dst + f"attn.qkv.{p}"] = torch.cat([_get(state, src + f"self_attn.{n}_proj.{p}") for n in "qkv"])
            new[dst + f"attn.proj.{p}"] = _get(state, src + f"self_attn.out_proj.{p}")
            new[dst + f"ln_1.{p}"] = _get(state, src + f"self_attn_layer_norm.{p}")
            new[dst + f"ln_2.{p}"] = _get(state, src + f"final_layer_norm.{p}")
            new[dst + f"mlp.fc.{p}"] = _get(state, src + f"fc1.{p}")
            new[dst + f"mlp.proj.{p}"] = _get(state, src + f"fc2.{p}")

    config = GPTConfig(n_codes=n_target, grid=grid, n_layer=len(layers), n_head=heads, n_embd=d,
                       mlp_ratio=fc1.shape[0] / d, dropout=dropout, bias=True, norm_position="pre" if pre_ln else "post",
                       embed_scale=True, eos_target=not nar, **kwargs)
    gpt = GPT(config, provenance={"source": "digit-fairseq", "stage": stage, "checkpoint": Path(path).name})
    missing = set(gpt.state_dict()) ^ set(new)
    if missing:
        raise CheckpointError(f"{path}: converted keys do not fit the GPT ({sorted(missing)[:4]}); "
                              "the checkpoint is not a DiGIT decoder this converter knows")
    try:
        gpt.load_state_dict(new)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensor shapes do not fit a DiGIT decoder ({str(e).splitlines()[0]})") from e

    centroids = state["centroids"].float().t().contiguous() if "centroids" in state else None
    enc = {k[len("pretrained_encoder."):]: v.float() for k, v in state.items() if k.startswith("pretrained_encoder.")}
    log.info("converted DiGIT %s: %d layers, width %d, %d heads, %s, %d target ids%s", stage, len(layers), d, heads,
             "pre-LN" if pre_ln else "post-LN", n_target, f", {kwargs.get('n_classes', 0)} classes" if stage == "stage1" else "")
    return DigitConversion(gpt.eval(), stage, centroids, enc or None)


def save_digit_conversion(conv: DigitConversion, out: str | os.PathLike, *, dinov2_model: str | None = None,
                          model_kwargs: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``out/gpt`` and, from what the checkpoint holds, ``out/tokenizer`` (DINOv2 weights and
    centroids: a DiGIT tokenizer directory) or ``out/codebook.safetensors`` (centroids only)."""
    from .codebook.io import save_codebook

    out = Path(out)
    written = {"gpt": conv.gpt.save_pretrained(out / "gpt")}
    if conv.centroids is None:
        return written
    if conv.encoder_state is None:
        written["codebook"] = save_codebook(out / "codebook.safetensors", conv.centroids,
                                            {"source": "digit-fairseq", "stage": conv.stage})
        return written
    from .digit import DiscriminativeTokenizer, ExtractorSpec, build_dinov2

    d = conv.centroids.shape[1]
    model = dinov2_model or {768: "vit_base_patch14_reg4_dinov2", 1024: "vit_large_patch14_reg4_dinov2"}.get(d)
    if model is None:
        raise CheckpointError(f"no default DINOv2 architecture for {d}-d centroids; pass --dinov2-model")
    spec = ExtractorSpec(model=model, model_kwargs=dict(model_kwargs or {}))
    tok = DiscriminativeTokenizer(build_dinov2(spec, conv.encoder_state), conv.centroids, spec=spec,
                                  check_provenance=False)
    written["tokenizer"] = tok.save_pretrained(out / "tokenizer", embed_weights=True)
    return written
