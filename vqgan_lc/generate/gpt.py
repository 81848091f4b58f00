"""A decoder-only transformer prior over token grids (nanoGPT style), class- and prefix-conditional.

Sequence layout (all positions attend causally to everything before them)::

    [prefix_0 .. prefix_{P-1}]  [cond]  [x_0 .. x_{T-2}]      input   (P + T positions)
                                  |       |          |
                                 x_0     x_1  ...  x_{T-1}     predicted target ids

* ``cond`` is the class token ``n_codes + label`` (the official VQGAN-LC minGPT layout: one embedding
  table for image ids and class ids) or the *null* token ``n_codes + n_classes``: the start token of an
  unconditional model, the dropped class of classifier-free guidance, and the input of the linear probe.
* The optional prefix (DiGIT stage 2: the 256 DiGIT ids of the image) has its own embedding table and
  its own learned positional table; the loss is only on the target ids.
* The target ids ``x`` are a ``grid = (h, w)`` map in raster order, ``T = h * w``; ids in ``[0, n_codes)``.
* The head predicts image ids only (``n_codes`` logits): sampling never sees class ids. The official
  minGPT head spans all ``n_codes + n_classes`` ids and drops the class logits when sampling;
  ``GPTConfig(head="vocabulary")`` keeps that layout (what ``vqgan-lc convert --format gpt`` produces):
  ``logits()`` still returns the ``n_codes`` image logits, ``logits(full=True)`` all of them, and the
  loss is the cross-entropy over all of them, as the official training computes it.

``GPTConfig(attention="bidirectional")`` is the MaskGIT (NAR) variant: the same blocks without the causal
mask, input ``[prefix] + [cond] + x_0 .. x_{T-1}`` with masked ids replaced by ``[MASK]``, ``logits[:, 1 + i]``
predicting ``x_i`` (``vqgan_lc.generate.maskgit``).

Blocks are pre-LN (LayerNorm -> attention / MLP -> residual) with GELU and ``F.scaled_dot_product_attention``
by default. ``GPTConfig(norm_position="post", embed_scale=True, eos_target=True)`` expresses DiGIT's
stage-1 fairseq decoder exactly (post-LN, sqrt(d) embedding scale, EOS target); ``vqgan-lc convert
--format digit`` produces such models from the released checkpoints. A per-layer KV cache
(``KVCache``) makes sampling one forward per token.

Files: ``save_pretrained(dir)`` writes ``config.json`` (``format: vqgan-lc-gpt``, ``format_version``,
``config``, ``provenance``) and ``model.safetensors``; ``from_pretrained`` rejects unknown versions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._io import CONFIG_NAME, WEIGHTS_NAME
from ..config import check_fields
from ..errors import CheckpointError, TokenRangeError, UnknownPresetError
from ..formats import Description, dtype_names, millions, numel, safetensors_header
from ..pretrained import PretrainedMixin

log = logging.getLogger(__name__)

GPT_FORMAT = "vqgan-lc-gpt"
GPT_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GPTConfig:
    """Architecture of the GPT prior (what ``config.json`` stores).

    Args:
        n_codes: target vocabulary; generated ids lie in ``[0, n_codes)`` (the tokenizer's codebook size).
        grid: target token grid ``(h, w)``; the sequence is its raster order, ``seq_len = h * w``.
        n_classes: class tokens ``n_codes + c`` for ``c in [0, n_classes)``; 0 = unconditional.
        null_class: add the null token ``n_codes + n_classes`` (needed for CFG and class dropout). It is
            always present when ``n_classes == 0``, where it is the start token. ``False`` with classes
            gives the official VQGAN-LC vocabulary ``n_codes + n_classes``.
        prefix_vocab: vocabulary of the conditioning prefix (DiGIT ids); 0 = no prefix.
        prefix_grid: ``(h, w)`` of the prefix, required with ``prefix_vocab``.
        n_layer, n_head, n_embd: depth, attention heads, width.
        mlp_ratio: hidden width of the MLP relative to ``n_embd`` (4: DiGIT's 1024 -> 4096).
        dropout: on embeddings, attention weights and residual branches (training only).
        bias: biases in Linear and LayerNorm layers.
        tie_weights: the head reuses the first ``n_codes`` rows of the token embedding.
        norm_position: ``"pre"`` (LayerNorm before attention / MLP, plus a final ``ln_f``; the default)
            or ``"post"`` (LayerNorm after each residual sum and no final norm: fairseq's
            ``decoder_normalize_before=False``, DiGIT's stage 1).
        embed_scale: multiply token (and prefix) embeddings by ``sqrt(n_embd)`` before adding positions,
            as fairseq does (DiGIT).
        eos_target: predict an end-of-sequence id after the last target id (fairseq's 257th target);
            the head gets one more output (index ``n_codes``) and the positional table one more row.
            Sampling never sees the EOS logit.
        attention: ``"causal"`` (the autoregressive prior; the default) or ``"bidirectional"``: every
            position sees every other, the input vocabulary gets a ``[MASK]`` id (``mask_id``, the last
            row) and the positional table covers cond + all ``seq_len`` ids. This is the MaskGIT (NAR)
            stage 2 of DiGIT; train and sample it with ``vqgan_lc.generate.maskgit``.
        head: ``"codes"`` (``n_codes`` logits; the default) or ``"vocabulary"``: one output per input-vocabulary
            id (``input_vocab``: image ids, class ids, the null token), the official VQGAN-LC minGPT's
            101,000-way head; the training cross-entropy runs over all of them, sampling and ``forward``
            still see the image logits only (``full=True`` returns all).

    Defaults of the last five fields keep the original GPT, so a ``config.json`` without them loads.
    """

    n_codes: int
    grid: tuple[int, int] = (16, 16)
    n_classes: int = 0
    null_class: bool = True
    prefix_vocab: int = 0
    prefix_grid: tuple[int, int] | None = None
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = False
    norm_position: Literal["pre", "post"] = "pre"
    embed_scale: bool = False
    eos_target: bool = False
    attention: Literal["causal", "bidirectional"] = "causal"
    head: Literal["codes", "vocabulary"] = "codes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.prefix_grid is not None:
            object.__setattr__(self, "prefix_grid", tuple(int(g) for g in self.prefix_grid))
        if self.n_classes == 0 and not self.null_class:
            object.__setattr__(self, "null_class", True)  # the start token of an unconditional model
        if self.n_codes < 1 or self.n_classes < 0 or self.prefix_vocab < 0:
            raise ValueError("n_codes must be positive and n_classes, prefix_vocab non-negative")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (h, w) with positive sides, got {self.grid}")
        if self.prefix_vocab and (self.prefix_grid is None or len(self.prefix_grid) != 2 or min(self.prefix_grid) < 1):
            raise ValueError("a prefix vocabulary needs prefix_grid = (h, w)")
        if not self.prefix_vocab and self.prefix_grid is not None:
            raise ValueError("prefix_grid is set but prefix_vocab is 0")
        if self.n_layer < 1 or self.n_head < 1 or self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}); n_layer >= 1")
        if not 0.0 <= self.dropout < 1.0 or self.mlp_ratio <= 0:
            raise ValueError("dropout must be in [0, 1) and mlp_ratio positive")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.eos_target and self.tie_weights:
            raise ValueError("eos_target needs an untied head (tie_weights=False)")
        if self.attention not in ("causal", "bidirectional"):
            raise ValueError(f"attention must be 'causal' or 'bidirectional', got {self.attention!r}")
        if self.bidirectional and self.eos_target:
            raise ValueError("eos_target is an autoregressive option; a bidirectional (MaskGIT) model has none")
        if self.head not in ("codes", "vocabulary"):
            raise ValueError(f"head must be 'codes' or 'vocabulary', got {self.head!r}")
        if self.head == "vocabulary" and (self.tie_weights or self.eos_target or self.bidirectional):
            raise ValueError("head 'vocabulary' (the official n_codes + n_classes head) needs an untied causal head "
                             "without eos_target")

    # derived sizes
    @property
    def seq_len(self) -> int:
        """Target tokens per sample, ``h * w``."""
        return self.grid[0] * self.grid[1]

    @property
    def bidirectional(self) -> bool:
        """A MaskGIT (NAR) model: bidirectional attention and a ``[MASK]`` input id."""
        return self.attention == "bidirectional"

    @property
    def n_positions(self) -> int:
        """Rows of the target positional table: cond + ``seq_len - 1`` ids, one more with ``eos_target``
        or ``bidirectional`` (cond + all ``seq_len`` ids)."""
        return self.seq_len + int(self.eos_target or self.bidirectional)

    @property
    def prefix_len(self) -> int:
        return self.prefix_grid[0] * self.prefix_grid[1] if self.prefix_grid else 0

    @property
    def null_id(self) -> int | None:
        """Input id of the null class / start token, or None without one."""
        return self.n_codes + self.n_classes if self.null_class else None

    @property
    def mask_id(self) -> int | None:
        """Input id of ``[MASK]`` (bidirectional models only): the row after the null token."""
        return self.n_codes + self.n_classes + int(self.null_class) if self.bidirectional else None

    @property
    def input_vocab(self) -> int:
        """Rows of the token embedding: image ids, class ids, the null token, then ``[MASK]``."""
        return self.n_codes + self.n_classes + int(self.null_class) + int(self.bidirectional)

    @property
    def class_conditional(self) -> bool:
        return self.n_classes > 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        d["prefix_grid"] = list(self.prefix_grid) if self.prefix_grid else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        check_fields(cls, d, "GPT config")
        return cls(**d)

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)


# Paper sizes. Data-dependent fields (n_codes, grid, n_classes, prefix) are set from the token
# directories when training; the values here are the papers'.
GPT_PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and demos.
    "gpt-tiny": dict(n_codes=1024, grid=(16, 16), n_layer=2, n_head=4, n_embd=64),
    # VQGAN-LC paper §4.1 / official minGPT: 24 layers, 16 heads, width 1024 ("404M"), 100k codes +
    # 1000 classes in one table, block 257, no null class.
    "gpt-vqgan-lc-404m": dict(n_codes=100_000, grid=(16, 16), n_classes=1000, null_class=False,
                              n_layer=24, n_head=16, n_embd=1024),
    # DiGIT base stage 1 (219M): 16 layers, width 1024, 16 heads, FFN 4096, 8192 k-means ids, 16x16.
    "gpt-digit-stage1-base": dict(n_codes=8192, grid=(16, 16), n_layer=16, n_head=16, n_embd=1024),
    # The same network as DiGIT's fairseq decoder (what `convert --format digit` yields): post-LN, sqrt(d)
    # embedding scale, EOS target. Sampling: top-k 200, 300 class-conditional, 400 large
    # (scripts/infer_stage1_ar.sh, scripts/infer_stage1_ar_classcond.sh, README; `digit_stage1_top_k`).
    "gpt-digit-stage1-base-fairseq": dict(n_codes=8192, grid=(16, 16), n_layer=16, n_head=16, n_embd=1024,
                                          norm_position="post", embed_scale=True, eos_target=True),
    # DiGIT base stage 2: same size, 256 DiGIT ids as prefix (own embeddings and positions) then BOS and
    # the pixel tokenizer's ids (here a VQGAN-LC model's; DiGIT used MAGE's 1024-code VQGAN).
    "gpt-digit-stage2-base": dict(n_codes=100_000, grid=(16, 16), prefix_vocab=8192, prefix_grid=(16, 16),
                                  n_layer=16, n_head=16, n_embd=1024),
    # DiGIT base stage 2, NAR (MaskGIT): the same network with bidirectional attention and a [MASK] id
    # (config/stage2/dino_base_nar.yaml); train with objective "maskgit", sample in 8 steps.
    "gpt-digit-stage2-nar-base": dict(n_codes=100_000, grid=(16, 16), prefix_vocab=8192, prefix_grid=(16, 16),
                                      n_layer=16, n_head=16, n_embd=1024, attention="bidirectional"),
}


def list_gpt_presets() -> list[str]:
    return sorted(GPT_PRESETS)


def gpt_config(name: str, **overrides: Any) -> GPTConfig:
    """The named preset (see ``GPT_PRESETS``) with ``overrides`` applied."""
    if name not in GPT_PRESETS:
        raise UnknownPresetError("GPT preset", name, list_gpt_presets())
    return GPTConfig(**{**GPT_PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of every layer for ``batch`` sequences of up to ``max_len`` positions.

    ``length`` is the number of positions already written; each forward with a cache appends.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, *, device: torch.device, dtype: torch.dtype) -> None:
        hd = config.n_embd // config.n_head
        shape = (batch, config.n_head, max_len, hd)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the batch (e.g. to expand a shared prefix)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


# ----------------------------------------------------------------------------------------- modules
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.causal = not cfg.bidirectional
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, start: int) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        mask, causal = None, self.causal
        if cache is not None:
            if not self.causal:
                raise ValueError("a bidirectional model decodes without a KV cache")
            ck, cv = cache
            ck[:, :, start : start + t] = k
            cv[:, :, start : start + t] = v
            k, v = ck[:, :, : start + t], cv[:, :, : start + t]
            if t == 1:
                causal = False  # one new query sees every cached key
            elif start > 0:  # a chunk after cached positions: query i sees keys <= start + i
                causal = False
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Transformer block, pre-LN (default) or post-LN (``norm_position="post"``, fairseq's layer)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.post_norm = cfg.norm_position == "post"
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, cache, start))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class GPT(PretrainedMixin, nn.Module):
    """Decoder-only transformer over ``(B, h, w)`` token grids; see the module docstring for the layout.

    ``forward(ids, labels, prefix)`` takes the first ``t < seq_len`` target ids ``(B, t)`` and returns
    ``(B, t + 1, n_codes)`` logits: ``logits[:, i]`` predicts target id ``i``. Labels are ``(B,)`` class
    indices in ``[0, n_classes)`` or ``-1`` for the null class; ``None`` means all null. Prefix ids are
    ``(B, prefix_len)`` (or ``(B, ph, pw)``) in ``[0, prefix_vocab)``. ``provenance``: where the weights
    came from (the training run; written to ``config.json``).
    """

    HUB_KIND: ClassVar[str] = "gpt"

    FORMAT: ClassVar[str] = GPT_FORMAT
    FORMAT_VERSION: ClassVar[int] = GPT_FORMAT_VERSION
    config_class: ClassVar[type[GPTConfig]] = GPTConfig
    WHAT: ClassVar[str] = "GPT"
    LOAD_HINT: ClassVar[str] = "train one with `vqgan-lc train-gpt`"

    def __init__(self, config: GPTConfig, *, provenance: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.provenance = dict(provenance or {})
        c = config
        self.tok_emb = nn.Embedding(c.input_vocab, c.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, c.n_positions, c.n_embd))
        if c.prefix_vocab:
            self.prefix_emb = nn.Embedding(c.prefix_vocab, c.n_embd)
            self.prefix_pos_emb = nn.Parameter(torch.zeros(1, c.prefix_len, c.n_embd))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        # post-LN (fairseq) has no final norm: the last block already ends in a LayerNorm
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias) if c.norm_position == "pre" else nn.Identity()
        self.head = None if c.tie_weights else nn.Linear(c.n_embd, self.head_outputs, bias=False)
        self.emb_mult = math.sqrt(c.n_embd) if c.embed_scale else 1.0
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        nn.init.normal_(self.pos_emb, std=0.02)
        if c.prefix_vocab:
            nn.init.normal_(self.prefix_pos_emb, std=0.02)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            # fairseq scales embeddings by sqrt(d) and draws them from N(0, d^-1/2); the GPT's only embeddings
            # are the token and prefix tables
            std = m.embedding_dim ** -0.5 if self.config.embed_scale else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)

    # ------------------------------------------------------------------ sizes
    @property
    def head_outputs(self) -> int:
        """Rows of the head: ``n_codes`` (+1 EOS with ``eos_target``), or ``input_vocab`` with ``head="vocabulary"``."""
        c = self.config
        return c.input_vocab if c.head == "vocabulary" else c.n_codes + int(c.eos_target)

    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    def num_parameters(self, *, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.pos_emb.numel() + self.tok_emb.weight.numel()
        return n

    # ------------------------------------------------------------------ inputs
    def cond_ids(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B,)`` labels (-1 = null) or None -> ``(B,)`` input ids of the class / null token."""
        c = self.config
        if labels is None:
            if c.null_id is None:
                raise ValueError("this GPT is class-conditional without a null class: pass labels")
            return torch.full((batch,), c.null_id, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"got {labels.shape[0]} labels for a batch of {batch}")
        if labels.numel() and (int(labels.max()) >= c.n_classes or int(labels.min()) < -1):
            raise TokenRangeError(f"labels must lie in [0, {c.n_classes}) (or -1 for the null class), got "
                                  f"[{int(labels.min())}, {int(labels.max())}]")
        null = labels < 0
        if bool(null.any()) and c.null_id is None:
            raise ValueError("label -1 (null class) needs a model trained with null_class=True")
        return torch.where(null, torch.full_like(labels, c.null_id or 0), labels + c.n_codes)

    def _check_prefix(self, prefix: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        c = self.config
        if not c.prefix_vocab:
            if prefix is not None:
                raise ValueError("this GPT takes no prefix")
            return None
        if prefix is None:
            raise ValueError(f"this GPT needs a prefix of {c.prefix_len} ids in [0, {c.prefix_vocab})")
        prefix = prefix.to(self.device).long().reshape(prefix.shape[0], -1)
        if prefix.shape != (batch, c.prefix_len):
            raise ValueError(f"prefix must be ({batch}, {c.prefix_len}), got {tuple(prefix.shape)}")
        if prefix.numel() and (int(prefix.min()) < 0 or int(prefix.max()) >= c.prefix_vocab):
            raise TokenRangeError(f"prefix ids must lie in [0, {c.prefix_vocab})")
        return prefix

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device).long()
        if ids.dim() == 3:
            ids = ids.reshape(ids.shape[0], -1)
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, t) or (B, h, w), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.n_codes):
            raise TokenRangeError(f"ids must lie in [0, {self.config.n_codes}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids

    def embed(self, ids: torch.Tensor, labels: torch.Tensor | None = None,
              prefix: torch.Tensor | None = None, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings ``(B, P + 1 + t, n_embd)`` of ``[prefix] + [cond] + ids``.

        ``ids`` are input-vocabulary ids (image ids, or class ids where ``pkeep`` corruption drew them).
        """
        b, t = ids.shape
        if t + 1 > self.config.n_positions:
            raise ValueError(f"at most {self.config.n_positions - 1} target ids fit as input, got {t}")
        cond = self.cond_ids(labels, b) if cond is None else cond
        x = self.tok_emb(torch.cat([cond[:, None], ids], dim=1)) * self.emb_mult + self.pos_emb[:, : t + 1]
        prefix = self._check_prefix(prefix, b)
        if prefix is not None:
            x = torch.cat([self.prefix_emb(prefix) * self.emb_mult + self.prefix_pos_emb, x], dim=1)
        return self.drop(x)

    # ------------------------------------------------------------------ forward
    def logits(self, h: torch.Tensor, *, with_eos: bool = False, full: bool = False) -> torch.Tensor:
        """Final LayerNorm + head: ``(..., n_embd)`` -> ``(..., n_codes)`` (``n_codes + 1`` with ``with_eos``
        on an ``eos_target`` model: the last column is the EOS logit; ``input_vocab`` with ``full`` on a
        ``head="vocabulary"`` model: image ids, then class ids)."""
        h = self.ln_f(h)
        if self.head is None:
            return F.linear(h, self.tok_emb.weight[: self.config.n_codes])
        if full:
            if self.config.head != "vocabulary":
                raise ValueError("full needs a model with head='vocabulary'")
            return self.head(h)
        if self.config.head == "vocabulary":
            return F.linear(h, self.head.weight[: self.config.n_codes])
        if with_eos:
            if not self.config.eos_target:
                raise ValueError("with_eos needs a model with eos_target=True")
            return self.head(h)
        if self.config.eos_target or self.config.head == "vocabulary":
            return F.linear(h, self.head.weight[: self.config.n_codes])
        return self.head(h)

    def run_blocks(self, x: torch.Tensor, *, cache: KVCache | None = None, stop_after: int | None = None) -> torch.Tensor:
        """Run the blocks on embeddings ``x`` (B, L, D); with ``cache`` the positions follow
        ``cache.length`` and are appended. ``stop_after`` returns the output of that block (0-based)."""
        start = 0
        if cache is not None:
            start = cache.length
            if start + x.shape[1] > cache.max_len:
                raise ValueError(f"the KV cache holds {cache.max_len} positions; {start + x.shape[1]} needed")
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i]), start)
            if stop_after is not None and i == stop_after:
                break
        if cache is not None:
            cache.length = start + x.shape[1]
        return x

    def forward(self, ids: torch.Tensor, labels: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                *, last_only: bool = False, with_eos: bool = False, full: bool = False) -> torch.Tensor:
        """``(B, t)`` target ids (``t < seq_len``; ``t <= seq_len`` with ``eos_target``) -> ``(B, t + 1,
        n_codes)`` logits (``(B, n_codes)`` of the last position with ``last_only``; one more column, the
        EOS logit, with ``with_eos``; every head output, ``input_vocab`` columns, with ``full`` on a
        ``head="vocabulary"`` model) without a cache: full recomputation."""
        if self.config.bidirectional:
            raise ValueError("a bidirectional (MaskGIT) model predicts masked ids; use vqgan_lc.generate.maskgit.maskgit_logits")
        ids = self._check_ids(ids)
        h = self.run_blocks(self.embed(ids, labels, prefix))
        h = h[:, self.config.prefix_len :]
        return self.logits(h[:, -1] if last_only else h, with_eos=with_eos, full=full)

    def loss(self, ids: torch.Tensor, labels: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
             *, inputs: torch.Tensor | None = None, cond: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean next-token cross-entropy over the ``(B, seq_len)`` target ids (prefix excluded).

        ``inputs``/``cond`` replace the input ids / cond ids (``pkeep`` corruption, class dropout); the
        targets stay ``ids``.
        """
        if self.config.bidirectional:
            raise ValueError("a bidirectional (MaskGIT) model has no next-token loss; use vqgan_lc.generate.maskgit.maskgit_loss")
        ids = self._check_ids(ids)
        if ids.shape[1] != self.config.seq_len:
            raise ValueError(f"expected {self.config.seq_len} target ids per row, got {ids.shape[1]}")
        eos = self.config.eos_target
        inp = ids if inputs is None else inputs
        inp = inp if eos else inp[:, :-1]
        h = self.run_blocks(self.embed(inp, labels, prefix, cond=cond))[:, self.config.prefix_len :]
        logits = self.logits(h, with_eos=eos, full=self.config.head == "vocabulary")  # official: CE over all 101,000 ids
        if eos:  # fairseq's 257th target: EOS after the last id
            ids = torch.cat([ids, ids.new_full((ids.shape[0], 1), self.config.n_codes)], dim=1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1),
                               label_smoothing=label_smoothing)

    def hidden_states(self, ids: torch.Tensor, labels: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                      *, layer: int = -1) -> torch.Tensor:
        """Output of block ``layer`` (0-based, negative from the end) at the target positions:
        ``(B, t + 1, n_embd)`` for ``(B, t)`` ids (the cond position first). Used by the linear probe."""
        n = self.config.n_layer
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for {n} blocks (use -{n} .. {n - 1})")
        ids = self._check_ids(ids)
        h = self.run_blocks(self.embed(ids, labels, prefix), stop_after=layer % n)
        return h[:, self.config.prefix_len :]

    # ------------------------------------------------------------------ cached decoding
    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows of the full sequence (prefix + cond + seq_len - 1 ids)."""
        p = next(self.parameters())
        max_len = max_len or self.config.prefix_len + self.config.seq_len
        return KVCache(self.config, batch, max_len, device=p.device, dtype=p.dtype)

    def prefill(self, cache: KVCache, batch: int, labels: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Write ``[prefix] + [cond]`` of ``batch`` rows into an empty cache; returns the ``(B, n_codes)``
        logits of target id 0."""
        if cache.length:
            raise ValueError("prefill needs an empty cache")
        x = self.embed(torch.empty(batch, 0, dtype=torch.long, device=self.device), labels, prefix)
        return self.logits(self.run_blocks(x, cache=cache)[:, -1])

    def decode_step(self, cache: KVCache, ids: torch.Tensor) -> torch.Tensor:
        """Append target ids ``(B,)`` (or a chunk ``(B, n)``) after the cached positions; returns the
        ``(B, n_codes)`` logits of the next target id."""
        ids = ids.reshape(ids.shape[0], -1).long()
        pos = cache.length - self.config.prefix_len  # positions in the target table (cond is 0)
        if pos < 1 or pos + ids.shape[1] > self.config.seq_len:
            raise ValueError("decode_step needs a prefilled cache and at most seq_len - 1 target ids in total")
        x = self.drop(self.tok_emb(ids) * self.emb_mult + self.pos_emb[:, pos : pos + ids.shape[1]])
        return self.logits(self.run_blocks(x, cache=cache)[:, -1])


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of a GPT directory, read without allocating the weights (a meta-device model
    gives the expected keys and shapes)."""
    from .._io import read_format_json

    meta = read_format_json(path / CONFIG_NAME, GPT_FORMAT, GPT_FORMAT_VERSION, what="GPT config", error=CheckpointError)
    try:
        c = GPTConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME} has an invalid GPT config: {e}") from e
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} has a GPT config.json but no {WEIGHTS_NAME}; the directory is incomplete "
                              "(rerun `vqgan-lc train-gpt --resume` to export it)")
    _, tensors = safetensors_header(path / WEIGHTS_NAME)
    with torch.device("meta"):
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
        "head": "full (image + class ids, the official minGPT's)" if c.head == "vocabulary" else "image ids",
        "attention": c.attention,
        "parameters": millions(numel(tensors)),
        "dtype": dtype_names(tensors),
    }
    if "steps" in prov:
        fields["trained_steps"] = prov["steps"]
        fields["final_loss"] = prov.get("final_loss")
    return Description("GPT directory", GPT_FORMAT, GPT_FORMAT_VERSION, fields, {"config": c.to_dict(), "provenance": prov})
