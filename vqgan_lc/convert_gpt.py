"""The official VQGAN-LC GPT (``gpt-lc-100K-f16.pth``, minGPT layout) -> a vqgan-lc GPT directory.

What the release file holds (``training_gpt.py`` saves ``VQGANTransformer.state_dict()``; the evaluation
script strips a ``module.`` prefix and, for DeepSpeed files, reads the ``module`` entry):

* ``transformer.*``: Karpathy's minGPT (``models/mingpt.py``): ``tok_emb.weight`` (vocab x d, vocab =
  ``n_vision_words + n_class`` = 101,000), ``pos_emb`` (1 x block_size x d, block_size 257),
  ``blocks.N.ln1|ln2``, ``blocks.N.attn.{key,query,value,proj}``, the causal ``blocks.N.attn.mask``
  buffer, ``blocks.N.mlp.0|2`` (d -> 4d -> d, exact GELU), ``ln_f`` and a bias-free ``head`` over the
  whole vocabulary. Pre-LN blocks, LayerNorm eps 1e-5, no dropout at inference.
* ``vqgan.*``: the frozen tokenizer it was trained on (the ``vqgan-lc-f16-100k`` release); dropped here,
  except that its codebook's row count gives ``n_vision_words``.

The mapping onto ``vqgan_lc.generate.gpt.GPT``: ``ln1``/``ln2`` -> ``ln_1``/``ln_2``; query, key and
value are concatenated (in that order) into ``qkv``; ``mlp.0``/``mlp.2`` -> ``mlp.fc``/``mlp.proj``; the
head keeps all 101,000 rows (``GPTConfig(head="vocabulary")``); the class token of class ``c`` is id
``n_codes + c`` (``null_class=False``), as the official sampler feeds it. The last of the 257 positional
rows is never used by the official code (its longest input is the class token + 255 ids) and is dropped;
the causal mask buffer is checked and dropped. fp16 weights become float32.

The head count is not stored in the file: the official code hard-codes 16 (``OFFICIAL_N_HEAD``).
Files are read with ``torch.load(weights_only=True)`` and only ``argparse.Namespace`` allowed besides
tensors and plain containers, as ``vqgan_lc.convert`` reads the VQGAN release.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .generate.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)

OFFICIAL_N_HEAD = 16
"""``models/models_gpt.py`` builds ``GPT(n_layer=24, n_head=16, n_embd=1024, block_size=257)``."""

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_WRAPPERS = ("module", "model", "state_dict")


def load_official_gpt_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official GPT file safely; returns its flat state dict (``module.`` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GPT checkpoint {path} does not exist; pass the official gpt-lc-100K-f16.pth")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} cannot be read safely as an official VQGAN-LC GPT checkpoint: {first}; only tensors, plain "
            "containers and argparse.Namespace are allowed, so a file needing other classes is refused"
        ) from e
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a GPT state dict; pass the official "
                              "gpt-lc-100K-f16.pth")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _split(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], int | None, int]:
    """The minGPT part (``transformer.`` stripped), the embedded tokenizer's codebook rows, keys dropped."""
    if any(k.startswith("transformer.") for k in state):
        gpt = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    else:
        gpt = {k: v for k, v in state.items() if not k.startswith("vqgan.")}
    if "tok_emb.weight" not in gpt or "pos_emb" not in gpt:
        raise CheckpointError(f"{source} has no transformer.tok_emb.weight / pos_emb, so it is not an official "
                              "VQGAN-LC minGPT checkpoint (keys: " + ", ".join(sorted(state)[:5]) + ")")
    codebook = state.get("vqgan.tok_embeddings.weight")
    return gpt, (int(codebook.shape[0]) if codebook is not None else None), len(state) - len(gpt)


def official_gpt_config(state: dict[str, torch.Tensor], *, n_codes: int, n_head: int = OFFICIAL_N_HEAD,
                        grid: tuple[int, int] | None = None, source: str = "checkpoint") -> GPTConfig:
    """The ``GPTConfig`` of a minGPT state dict (``transformer.`` stripped): sizes from the tensor shapes."""
    vocab, d = (int(s) for s in state["tok_emb.weight"].shape)
    block = int(state["pos_emb"].shape[1])
    layers = sorted({int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{source} has no complete blocks.N.* layers; it is not a minGPT checkpoint")
    if "head.weight" not in state or tuple(state["head.weight"].shape) != (vocab, d):
        raise CheckpointError(f"{source}: head.weight must be ({vocab}, {d}), the minGPT head over the whole vocabulary")
    if not 0 < n_codes < vocab:
        raise CheckpointError(
            f"{source} has a vocabulary of {vocab:,} ids, so {n_codes:,} image ids leave no class ids; the "
            "official GPT is class-conditional (vocabulary = image ids + classes): pass the tokenizer's codebook "
            "size with --n-codes"
        )
    if grid is None:
        side = math.isqrt(block - 1)
        if side * side != block - 1:
            raise CheckpointError(f"{source}: block size {block} is not 1 + a square grid; pass the grid explicitly")
        grid = (side, side)
    if grid[0] * grid[1] + 1 > block:
        raise CheckpointError(f"{source}: block size {block} cannot hold the class token + {grid[0] * grid[1]} ids")
    if d % n_head:
        raise CheckpointError(f"{source}: width {d} is not a multiple of {n_head} heads; pass --n-head")
    hidden = int(state["blocks.0.mlp.0.weight"].shape[0])
    return GPTConfig(n_codes=n_codes, grid=grid, n_classes=vocab - n_codes, null_class=False, n_layer=len(layers),
                     n_head=n_head, n_embd=d, mlp_ratio=hidden / d, dropout=0.0, bias=True, head="vocabulary")


def official_gpt_state_dict(state: dict[str, torch.Tensor], config: GPTConfig, *,
                            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """minGPT keys (``transformer.`` stripped) -> ``GPT`` keys, float32."""
    out: dict[str, torch.Tensor] = {
        "tok_emb.weight": state["tok_emb.weight"],
        "pos_emb": state["pos_emb"][:, : config.n_positions],
        "ln_f.weight": state["ln_f.weight"],
        "ln_f.bias": state["ln_f.bias"],
        "head.weight": state["head.weight"],
    }
    block = int(state["pos_emb"].shape[1])
    causal = torch.ones(block, block).tril().view(1, 1, block, block)
    for i in range(config.n_layer):
        src, dst = f"blocks.{i}.", f"blocks.{i}."
        try:
            for p in ("weight", "bias"):
                out[f"{dst}ln_1.{p}"] = state[f"{src}ln1.{p}"]
                out[f"{dst}ln_2.{p}"] = state[f"{src}ln2.{p}"]
                out[f"{dst}attn.qkv.{p}"] = torch.cat([state[f"{src}attn.{n}.{p}"] for n in ("query", "key", "value")])
                out[f"{dst}attn.proj.{p}"] = state[f"{src}attn.proj.{p}"]
                out[f"{dst}mlp.fc.{p}"] = state[f"{src}mlp.0.{p}"]
                out[f"{dst}mlp.proj.{p}"] = state[f"{src}mlp.2.{p}"]
        except KeyError as e:
            raise CheckpointError(f"{source} lacks {e.args[0]}; it is not an official VQGAN-LC minGPT checkpoint") from e
        mask = state.get(f"{src}attn.mask")
        if mask is not None and not torch.equal(mask.float(), causal):
            raise CheckpointError(f"{source}: blocks.{i}.attn.mask is not the plain causal mask (an n_unmasked "
                                  "prefix?); only the official causal GPT converts")
    return {k: v.float() for k, v in out.items()}


def convert_official_gpt(
    checkpoint: str | os.PathLike,
    *,
    n_head: int = OFFICIAL_N_HEAD,
    n_codes: int | None = None,
    grid: tuple[int, int] | None = None,
) -> GPT:
    """Build a ``GPT`` holding the official minGPT weights of ``checkpoint`` (``gpt-lc-100K-f16.pth``).

    ``n_codes`` (the tokenizer's codebook size, 100,000) defaults to the row count of the embedded
    tokenizer's codebook (``vqgan.tok_embeddings.weight``); ``grid`` to the square of ``block_size - 1``
    (16 x 16). ``GPT.forward(ids, labels)`` then equals the official ``transformer(cat([n_codes + label,
    ids]))`` logits; ``logits(full=True)`` gives all ``n_codes + n_classes`` columns.
    """
    source = str(checkpoint)
    raw = load_official_gpt_checkpoint(checkpoint)
    state, embedded, dropped = _split(raw, source)
    if n_codes is None:
        if embedded is None:
            raise CheckpointError(f"{source} holds no vqgan.tok_embeddings.weight to read the image vocabulary from; "
                                  "pass the tokenizer's codebook size with --n-codes (100000 for the release)")
        n_codes = embedded
    elif embedded is not None and embedded != n_codes:
        raise CheckpointError(f"{source} was trained with a {embedded:,}-code tokenizer, not {n_codes:,}; "
                              f"pass --n-codes {embedded}")
    config = official_gpt_config(state, n_codes=n_codes, n_head=n_head, grid=grid, source=source)
    ours = official_gpt_state_dict(state, config, source=source)
    log.info("official GPT: %d layers, width %d, %d heads, %d image ids + %d classes; dropped %d tokenizer tensors",
             config.n_layer, config.n_embd, n_head, config.n_codes, config.n_classes, dropped)
    provenance = {
        "converted_from": Path(checkpoint).name,
        "official_format": "VQGAN-LC minGPT (models/mingpt.py)",
        "n_head": n_head,
        "dropped_tokenizer_tensors": dropped,
        "dropped_positions": int(state["pos_emb"].shape[1]) - config.n_positions,
    }
    with torch.device("meta"):
        shell = GPT(config, provenance=provenance)
    model = shell.to_empty(device="cpu")
    model.load_state_dict_checked(ours, source=source)
    return model.eval()


__all__ = [
    "OFFICIAL_N_HEAD",
    "convert_official_gpt",
    "load_official_gpt_checkpoint",
    "official_gpt_config",
    "official_gpt_state_dict",
]
