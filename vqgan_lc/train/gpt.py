"""Training the GPT prior with Lightning on token directories.

* ``GPTTokenDataset``: rows of a token directory as ``(ids (T,), label, prefix (P,))``; with a prefix
  directory (DiGIT stage 2: DiGIT ids of the same images) rows are paired by position after checking
  that both directories list the same images in the same order.
* ``GPTLightningModule``: next-token cross-entropy, AdamW (official VQGAN-LC GPT: lr 4.5e-4, betas
  (0.9, 0.95), weight decay 0.01 on Linear weights only, as minGPT), linear warmup -> optional constant
  hold -> cosine decay, ``pkeep`` input corruption and class dropout for CFG.
* ``fit_gpt``: the whole run -- model config from the data, Trainer, export to a GPT directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch

from ..config import check_fields
from ..errors import CheckpointError, UnknownPresetError
from ..generate.gpt import GPT, GPT_PRESETS, GPTConfig
from ..generate.maskgit import maskgit_loss
from ..tokens.format import TokenFile, TokenFormatError, open_tokens
from .callbacks import PeriodicCheckpoint
from .checkpoints import check_lightning_checkpoint
from .schedule import lr_factor, set_lr

log = logging.getLogger(__name__)

DATA_FIELDS = ("n_codes", "grid", "n_classes", "prefix_vocab", "prefix_grid")


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GPTTrainConfig:
    """Training knobs (not saved with the weights).

    Defaults follow the official VQGAN-LC GPT (``training_gpt.py``): AdamW lr 4.5e-4, betas (0.9, 0.95),
    weight decay 0.01, linear warmup then cosine; ``pkeep`` 0.8 there (20% of input ids replaced by random
    ids from the whole vocabulary, codes + classes), 1.0 (off) by default here.

    ``objective``: ``"ar"`` (next-token cross-entropy; the default) or ``"maskgit"`` (DiGIT's NAR stage 2:
    cross-entropy on randomly masked positions of a ``GPTConfig(attention="bidirectional")`` model, see
    ``vqgan_lc.generate.maskgit``; DiGIT uses ``label_smoothing`` 0.1). ``fit_gpt`` sets the model's
    attention from it when the model config does not name one.

    Schedule: lr rises linearly over ``warmup_steps``, stays at ``lr`` until ``decay_start`` (default: end
    of warmup), then follows a half cosine to ``min_lr`` at ``max_steps`` (official: warmup 5,000, hold to
    80,000, cosine to 0 at 450,000).
    """

    batch_size: int = 32
    lr: float = 4.5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 5000
    decay_start: int | None = None
    max_steps: int = 450_000
    min_lr: float = 0.0
    pkeep: float = 1.0
    class_dropout: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    num_workers: int = 2
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    objective: Literal["ar", "maskgit"] = "ar"
    checkpoint_every_minutes: float | None = 30.0  # last.ckpt also after this much wall time (None: steps only)

    def __post_init__(self) -> None:
        if self.objective not in ("ar", "maskgit"):
            raise ValueError(f"objective must be 'ar' or 'maskgit', got {self.objective!r}")
        if self.objective == "maskgit" and self.pkeep < 1.0:
            raise ValueError("pkeep (random input ids) is an autoregressive option; set train.pkeep: 1.0 with objective maskgit")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not 0.0 < self.pkeep <= 1.0:
            raise ValueError(f"pkeep must be in (0, 1], got {self.pkeep}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.checkpoint_every_minutes is not None and self.checkpoint_every_minutes <= 0:
            raise ValueError(f"checkpoint_every_minutes must be positive or null, got {self.checkpoint_every_minutes}")
        if self.max_steps < 1 or self.warmup_steps < 0 or self.batch_size < 1:
            raise ValueError("max_steps and batch_size must be positive, warmup_steps >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTTrainConfig:
        check_fields(cls, d, "train config")
        return cls(**d)


def lr_at(step: int, cfg: GPTTrainConfig) -> float:
    """Learning rate at optimizer step ``step`` (0-based): warmup -> hold -> cosine to ``min_lr``
    (``vqgan_lc.train.schedule.lr_factor`` with the minGPT warm-up, which starts at ``lr / warmup_steps``)."""
    return cfg.lr * lr_factor(step, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                              min_lr_ratio=cfg.min_lr / cfg.lr if cfg.lr else 0.0, hold_until=cfg.decay_start, warmup_start="one_step")


# ----------------------------------------------------------------------------------------- data
def check_paired(tokens: TokenFile, prefix: TokenFile) -> None:
    """Refuse a prefix directory whose rows are not the same images in the same order."""
    a, b = tokens.directory, prefix.directory
    if len(tokens) != len(prefix):
        raise TokenFormatError(f"{a} has {len(tokens)} rows but the prefix tokens {b} have {len(prefix)}; encode the "
                               "same image folder (and file list) with both tokenizers")
    if tokens.paths != prefix.paths:
        i = next(i for i, (p, q) in enumerate(zip(tokens.paths, prefix.paths)) if p != q)
        raise TokenFormatError(f"{a} and the prefix tokens {b} list different images (row {i}: {tokens.paths[i]!r} vs "
                               f"{prefix.paths[i]!r}); encode the same image folder with both tokenizers")
    if not np.array_equal(tokens.labels, prefix.labels):
        raise TokenFormatError(f"{a} and the prefix tokens {b} have different labels for the same images")


class GPTTokenDataset(torch.utils.data.Dataset):
    """Rows as ``(ids (T,) int64, label int64, prefix (P,) int64)`` (``P = 0`` without a prefix directory).

    ``ids`` is the ``(h, w)`` map in raster order; the label is -1 for an image without a class.
    """

    def __init__(self, tokens: str | os.PathLike | TokenFile, prefix_tokens: str | os.PathLike | TokenFile | None = None,
                 *, verify: bool = True) -> None:
        self.tokens = tokens if isinstance(tokens, TokenFile) else open_tokens(tokens, verify=verify)
        if len(self.tokens.row_shape) != 2:  # written with --augment: (A, h, w) rows
            raise TokenFormatError(f"{self.tokens.directory} holds {self.tokens.row_shape[0]} augmented variants per "
                                   "image, which the GPT trainer does not read yet; encode without --augment")
        self.prefix = None
        if prefix_tokens is not None:
            self.prefix = prefix_tokens if isinstance(prefix_tokens, TokenFile) else open_tokens(prefix_tokens, verify=verify)
            check_paired(self.tokens, self.prefix)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(self.tokens.row(i).astype(np.int64).reshape(-1))
        prefix = (torch.from_numpy(self.prefix.row(i).astype(np.int64).reshape(-1)) if self.prefix is not None
                  else torch.empty(0, dtype=torch.long))
        return ids, torch.tensor(int(self.tokens.labels[i])), prefix


class GPTTokenData(pl.LightningDataModule):
    """Shuffled training batches of a ``GPTTokenDataset``."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, batch_size: int = 32, num_workers: int = 2,
                 seed: int = 0) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, batch_size, num_workers, seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        n = len(self.dataset)  # type: ignore[arg-type]
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=min(self.batch_size, n), shuffle=True, drop_last=n >= self.batch_size,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )


def model_config_from_data(spec: dict[str, Any], tokens: TokenFile, prefix: TokenFile | None = None) -> GPTConfig:
    """A ``GPTConfig`` from a YAML ``model:`` section and the token directories.

    ``spec`` holds an optional ``preset`` (architecture only) and field overrides. Data fields default to
    the data: ``n_codes`` = codebook size, ``grid`` = token grid, ``n_classes`` (``auto``) = number of
    classes when every row has a label else 0, ``prefix_vocab``/``prefix_grid`` from the prefix directory.
    Explicit data fields are checked against the data.
    """
    spec = dict(spec)
    preset = spec.pop("preset", None)
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in GPT_PRESETS:
            raise UnknownPresetError("GPT preset", preset, sorted(GPT_PRESETS))
        base = {k: v for k, v in GPT_PRESETS[preset].items() if k not in DATA_FIELDS}
    cfg = {**base, **spec}
    K = tokens.codebook_size
    n_codes = cfg.get("n_codes", "auto")
    cfg["n_codes"] = K if n_codes in (None, "auto") else int(n_codes)
    if cfg["n_codes"] < K:
        raise ValueError(f"n_codes {cfg['n_codes']} is smaller than the tokens' codebook size {K}")
    grid = cfg.get("grid", "auto")
    cfg["grid"] = tuple(tokens.grid) if grid in (None, "auto") else tuple(grid)
    if cfg["grid"] != tuple(tokens.grid):
        raise ValueError(f"grid {cfg['grid']} differs from the tokens' grid {tokens.grid}")
    labels = tokens.labels
    n_classes = cfg.get("n_classes", "auto")
    if n_classes in (None, "auto"):
        n_classes = len(tokens.manifest.get("classes") or []) if len(labels) and labels.min() >= 0 else 0
    cfg["n_classes"] = int(n_classes)
    if cfg["n_classes"] and len(labels) and (labels.min() < 0 or labels.max() >= cfg["n_classes"]):
        raise ValueError(f"n_classes={cfg['n_classes']} but the tokens' labels span [{labels.min()}, {labels.max()}] "
                         "(-1 = image without a class); set model.n_classes: 0 for an unconditional model")
    if prefix is not None:
        pv = cfg.get("prefix_vocab", "auto")
        cfg["prefix_vocab"] = prefix.codebook_size if pv in (None, "auto", 0) else int(pv)
        if cfg["prefix_vocab"] < prefix.codebook_size:
            raise ValueError(f"prefix_vocab {cfg['prefix_vocab']} is smaller than the prefix codebook {prefix.codebook_size}")
        cfg["prefix_grid"] = tuple(prefix.grid)
    else:
        if cfg.get("prefix_vocab") not in (None, "auto", 0):
            raise ValueError("the model config asks for a prefix but no --prefix-tokens directory was given")
        cfg["prefix_vocab"], cfg["prefix_grid"] = 0, None
    return GPTConfig.from_dict(cfg)


# ----------------------------------------------------------------------------------------- module
class GPTLightningModule(pl.LightningModule):
    """Trains a ``GPT`` on batches ``(ids (B, T), labels (B,), prefix (B, P))``."""

    def __init__(self, model_config: GPTConfig | dict[str, Any], train_config: GPTTrainConfig | dict[str, Any]) -> None:
        super().__init__()
        mc = model_config if isinstance(model_config, GPTConfig) else GPTConfig.from_dict(model_config)
        tc = train_config if isinstance(train_config, GPTTrainConfig) else GPTTrainConfig.from_dict(train_config)
        self.save_hyperparameters({"model_config": mc.to_dict(), "train_config": dataclasses.asdict(tc)})
        self.model_config, self.train_config = mc, tc
        if tc.class_dropout > 0 and mc.class_conditional and mc.null_id is None:
            raise ValueError("class_dropout needs a null class: set model.null_class: true")
        if (tc.objective == "maskgit") != mc.bidirectional:
            raise ValueError(f"objective {tc.objective!r} needs model.attention "
                             f"{'bidirectional' if tc.objective == 'maskgit' else 'causal'}, got {mc.attention!r}")
        self.gpt = GPT(mc)

    def corrupt(self, ids: torch.Tensor) -> torch.Tensor:
        """``pkeep``: each input id is kept with probability ``pkeep``, else replaced by a random id of the
        whole official vocabulary ``[0, n_codes + n_classes)`` (as the official VQGAN-LC GPT)."""
        p = self.train_config.pkeep
        if p >= 1.0:
            return ids
        keep = torch.rand(ids.shape, device=ids.device) < p
        rand = torch.randint_like(ids, self.model_config.n_codes + self.model_config.n_classes)
        return torch.where(keep, ids, rand)

    def _labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        mc = self.model_config
        if not mc.class_conditional:
            return None
        labels = labels.long()
        if self.train_config.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.train_config.class_dropout
            labels = labels.masked_fill(drop, -1)
        return labels

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        ids, labels, prefix = batch
        # nanoGPT's way: the learning rate of this step from the step counter (optimizer steps so far).
        lr = lr_at(self.global_step, self.train_config)
        set_lr(self.optimizers(), lr)  # type: ignore[arg-type]
        if self.train_config.objective == "maskgit":
            loss = maskgit_loss(self.gpt, ids, self._labels(labels), prefix if prefix.numel() else None,
                                label_smoothing=self.train_config.label_smoothing)
        else:
            loss = self.gpt.loss(ids, self._labels(labels), prefix if prefix.numel() else None,
                                 inputs=self.corrupt(ids), label_smoothing=self.train_config.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=ids.shape[0])
        self.log("lr", lr, on_step=True, batch_size=ids.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        tc = self.train_config
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.gpt.named_parameters():
            # minGPT: decay Linear weights only; biases, LayerNorms, embeddings and positions are not decayed.
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # No scheduler: training_step sets the learning rate from global_step before each step.
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas)


# ----------------------------------------------------------------------------------------- the run
def fit_gpt(
    tokens: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: dict[str, Any] | GPTConfig | None = None,
    train: GPTTrainConfig | dict[str, Any] | None = None,
    prefix_tokens: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train a GPT on a token directory (and a paired prefix directory) and export it to ``out``.

    ``out`` receives ``config.json`` + ``model.safetensors`` (loadable with ``GPT.from_pretrained``);
    Lightning checkpoints and logs go to ``out/lightning``. ``resume=True`` continues from
    ``out/lightning/checkpoints/last.ckpt`` (a :class:`~vqgan_lc.errors.CheckpointError` when it is
    missing or unreadable). A resumed run is not bit-identical to an uninterrupted one (audit O4: other
    final loss, every tensor different), unlike ``vqgan-lc train``'s; the likely cause, not yet
    checked, is random state (dropout, ``pkeep``, class dropout, the shuffle) that the checkpoint
    does not restore. Returns ``out``.
    """
    tc = train if isinstance(train, GPTTrainConfig) else GPTTrainConfig.from_dict(train or {})
    out = Path(out)
    work = out / "lightning"
    last = work / "checkpoints" / "last.ckpt"
    if resume:  # Lightning would warn and start from step 0, or raise a raw error on a damaged file
        if not last.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {last}; drop --resume to start a new run, or give "
                                  "the --out of the run to continue")
        check_lightning_checkpoint(last, option="--resume")
    dataset = GPTTokenDataset(tokens, prefix_tokens)
    spec = dict(model or {"preset": "gpt-tiny"}) if not isinstance(model, GPTConfig) else {}
    if spec and tc.objective == "maskgit":
        spec.setdefault("attention", "bidirectional")
    mc = model if isinstance(model, GPTConfig) else model_config_from_data(spec, dataset.tokens, dataset.prefix)
    pl.seed_everything(tc.seed, workers=True, verbose=False)
    module = GPTLightningModule(mc, tc)
    log.info("GPT %d layers x %d wide, %.2fM parameters; %d rows of %dx%d tokens, %d codes, %d classes%s",
             mc.n_layer, mc.n_embd, module.gpt.num_parameters() / 1e6, len(dataset), *mc.grid, mc.n_codes,
             mc.n_classes, f", prefix {mc.prefix_len} ids of {mc.prefix_vocab}" if mc.prefix_vocab else "")
    minutes = tc.checkpoint_every_minutes
    ckpt = PeriodicCheckpoint(dirpath=str(work / "checkpoints"), save_last=True, save_top_k=0,
                              every_n_train_steps=tc.checkpoint_every_n_steps,
                              train_time_interval=None if minutes is None else timedelta(minutes=minutes))
    trainer = pl.Trainer(
        max_steps=tc.max_steps, accelerator=tc.accelerator, devices=tc.devices, precision=tc.precision,  # type: ignore[arg-type]
        gradient_clip_val=tc.grad_clip, log_every_n_steps=tc.log_every_n_steps, default_root_dir=str(work),
        callbacks=[ckpt], enable_progress_bar=progress, enable_model_summary=False,
        logger=pl.loggers.CSVLogger(str(work), name="logs"), num_sanity_val_steps=0,
    )
    data = GPTTokenData(dataset, batch_size=tc.batch_size, num_workers=tc.num_workers, seed=tc.seed)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    if trainer.global_rank == 0:
        final = trainer.callback_metrics.get("train/loss")
        provenance = {
            "trainer": "vqgan-lc train-gpt",
            "tokens": {"directory": str(Path(tokens).resolve()), "tokenizer": dataset.tokens.manifest["tokenizer"],
                       "num_rows": len(dataset), "classes": list(dataset.tokens.manifest.get("classes") or [])},
            "prefix_tokens": None if dataset.prefix is None else {
                "directory": str(Path(prefix_tokens).resolve()),  # type: ignore[arg-type]
                "tokenizer": dataset.prefix.manifest["tokenizer"]},
            "steps": int(trainer.global_step),
            "final_loss": None if final is None else float(final),
            "train_config": dataclasses.asdict(tc),
        }
        module.gpt.cpu().float().save_pretrained(out, provenance=provenance)
        log.info("exported the GPT to %s after %d steps (loss %s)", out, trainer.global_step, provenance["final_loss"])
    return out


__all__ = [
    "GPTLightningModule",
    "GPTTokenData",
    "GPTTokenDataset",
    "GPTTrainConfig",
    "check_paired",
    "fit_gpt",
    "lr_at",
    "model_config_from_data",
]
