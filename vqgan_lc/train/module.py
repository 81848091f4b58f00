"""``VQGANLCModule``: VQGAN-LC (or a baseline quantizer) trained as the paper does, with Lightning.

One batch = one generator step, then one discriminator step on the same batch (manual
optimisation). Both optimizers are ``Adam(betas=(0.5, 0.9), eps=1e-7)`` with the same schedule:
linear warm-up from 0, then a half-cycle cosine to ``min_lr`` (official ``util/lr_sched.py``). The
learning rates are set from ``gen_step`` at the start of every step (``lr = base * lr_factor(gen_step)``),
so no scheduler state exists and a resumed run continues exactly.

Step counting. ``gen_step`` is the number of generator steps taken so far; it is saved in every
checkpoint and restored on resume. It drives the schedule, ``disc_start`` and ``max_steps``.
(Lightning's ``global_step`` counts the steps of both optimizers, so it grows by 2 per batch once
the discriminator trains; ``trainer.max_steps`` and ``ModelCheckpoint(every_n_train_steps)``
therefore count optimizer steps, not batches.) The GAN is active for the batch processed when
``gen_step > disc_start``, as the official code compares ``cur_iter > disc_start`` on the 0-based
iteration: with ``disc_start = k`` the first ``k + 1`` batches train the generator alone and the
discriminator first steps on 0-based batch ``k + 1``, after exactly ``k + 1`` generator steps.

Official options (``LossConfig``): ``disc_input: reforward`` gives the discriminator a fresh
reconstruction made after the generator update; ``lpips_dropout: official`` trains with the LPIPS
lin layers' dropout on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..build import ModelSpec, build_model
from ..errors import CheckpointError, ConfigError, ImageSourceError, MissingWeightsError
from ..export import CHECKPOINT_KEY, CHECKPOINT_VERSION
from ..losses import PerceptualLoss, VQGANLoss, per_image_reconstruction_loss
from ..quantize import CodebookUsage
from .config import LossConfig, OptimConfig
from .data import ImageDataModule
from .schedule import lr_factor, set_lr

log = logging.getLogger(__name__)

# One process: stop after this many batches in a row without a readable image (also checked per epoch).
EMPTY_BATCH_LIMIT = 100
_PERCEPTUAL_PREFIX = "objective.perceptual."
# Frozen dataclasses: safe to share as defaults.
_DEFAULT_MODEL, _DEFAULT_LOSS, _DEFAULT_OPTIM = ModelSpec(), LossConfig(), OptimConfig()


def _no_readable_images(trainer: pl.Trainer, span: str) -> str:
    """The sentence for training data without a readable image (``span``: where none was found)."""
    dm = trainer.datamodule  # type: ignore[attr-defined]
    skipped = dm.skipped if isinstance(dm, ImageDataModule) else None
    examples = ""
    if skipped:
        names = [str(p) for p in list(skipped)[:3]]
        examples = f" (skipped {len(skipped)}, e.g. {', '.join(names)})"
    return (f"no training image could be read in {span}{examples}; check --data.data / --data.file_list "
            "(corrupt files, Git LFS pointers instead of images?)")


class VQGANLCModule(pl.LightningModule):
    """The tokenizer, its PatchGAN and losses, and the two-player training step.

    Three typed groups: ``model`` (``vqgan_lc.build.ModelSpec``: preset or config, overrides,
    quantizer, codebook file, ``codebook_std``, ``init_from``; built by ``vqgan_lc.build.build_model``),
    ``loss`` (``LossConfig``) and ``optim`` (``OptimConfig``); plus ``num_grid_images``, the images of
    the reconstruction grid (first validation batch). In a YAML they are ``model: {model: {...},
    loss: {...}, optim: {...}}``; on the command line ``--model.loss.disc_start 150``.
    """

    def __init__(
        self,
        model: ModelSpec = _DEFAULT_MODEL,
        loss: LossConfig = _DEFAULT_LOSS,
        optim: OptimConfig = _DEFAULT_OPTIM,
        num_grid_images: int = 8,
    ) -> None:
        super().__init__()
        # Plain dicts, so that checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"model": dataclasses.asdict(model), "loss": dataclasses.asdict(loss),
                                   "optim": dataclasses.asdict(optim), "num_grid_images": num_grid_images})
        self.automatic_optimization = False
        self.spec, self.loss_config, self.optim_config = model, loss, optim
        self.num_grid_images = num_grid_images
        self.model = build_model(model)
        perceptual = None
        if loss.perceptual_weight > 0:
            from ..named_weights import resolve_checkpoint

            vgg = resolve_checkpoint(loss.lpips_weights, "lpips-vgg", option="--model.loss.lpips_weights")
            if vgg is None:
                raise MissingWeightsError(
                    "the perceptual loss needs local VGG16 ImageNet weights: pass --model.loss.lpips_weights "
                    "PATH/vgg16-397923af.pth (or torchvision, to fetch that file into the torch hub cache), or turn "
                    "the loss off with --model.loss.perceptual_weight 0"
                )
            perceptual = PerceptualLoss(vgg, loss.lpips_lin_weights, dropout=loss.lpips_dropout)
        else:
            log.info("perceptual (LPIPS) loss is off (perceptual_weight=0)")
        self.objective = VQGANLoss(
            perceptual=perceptual,
            rec_loss=loss.rec_loss,
            rec_weight=loss.rec_weight,
            perceptual_weight=loss.perceptual_weight,
            quantizer_weight=loss.quantizer_weight,
            gan_weight=loss.gan_weight,
            adaptive_weight_max=loss.adaptive_weight_max,
            disc_loss=loss.disc_loss,
            disc_layers=loss.disc_layers,
            disc_ndf=loss.disc_ndf,
        )
        self.gen_step = 0  # generator steps taken; persisted in checkpoints
        self._schedule: tuple[int, int] | None = None  # (warmup_steps, max_steps), resolved lazily
        self._val_usage: CodebookUsage | None = None
        self._val_sums: torch.Tensor | None = None
        self._train_usage: CodebookUsage | None = None
        self._readable_images = 0  # readable training images seen this epoch (this rank)
        self._empty_in_row = 0  # consecutive batches without a readable image (one process)
        self.val_metrics: dict[str, float] = {}  # the last validation epoch's numbers

    @property
    def gan_active(self) -> bool:
        """Whether this batch trains the discriminator and adds the adversarial term (``gen_step > disc_start``,
        the official comparison)."""
        return self.loss_config.gan_weight > 0 and self.gen_step > self.loss_config.disc_start

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.optim_config
        kw: dict[str, Any] = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        gen_params = [p for p in self.model.parameters() if p.requires_grad]
        opt_g = torch.optim.Adam(gen_params, **kw)
        opt_d = torch.optim.Adam(self.objective.discriminator.parameters(), **kw)
        # No scheduler: training_step sets both learning rates from gen_step before each step.
        return [opt_g, opt_d]

    def schedule_steps(self) -> tuple[int, int]:
        """``(warmup_steps, max_steps)`` in generator steps, resolved from epochs when needed (during fit)."""
        if self._schedule is None:
            o = self.optim_config
            max_steps = o.max_steps
            if max_steps is None:
                # One batch = one generator step, so Lightning's estimate (max_epochs x batches) is ours.
                total = self.trainer.estimated_stepping_batches
                if not math.isfinite(total) or total <= 0:
                    raise ConfigError("set --model.optim.max_steps (generator steps) or --trainer.max_epochs")
                max_steps = int(total)
            warmup = o.warmup_steps
            if warmup is None:
                per_epoch = self.trainer.num_training_batches
                if not math.isfinite(per_epoch) or per_epoch <= 0:
                    raise ConfigError("cannot count the batches of an epoch; set --model.optim.warmup_steps "
                                      "in generator steps")
                warmup = round(o.warmup_epochs * per_epoch)
            self._schedule = (int(warmup), int(max_steps))
            log.info("schedule: %d warm-up + cosine to %d generator steps; GAN from step %d",
                     warmup, max_steps, self.loss_config.disc_start)
        return self._schedule

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier of generator step ``step`` (``vqgan_lc.train.schedule.lr_factor``)."""
        warmup, max_steps = self.schedule_steps()
        return lr_factor(step, warmup_steps=warmup, max_steps=max_steps,
                         min_lr_ratio=self.optim_config.min_lr / self.optim_config.lr)

    def on_fit_start(self) -> None:
        # DDP: configs pass DDPStrategy(broadcast_buffers=False). The only buffers are the frozen
        # codebook (307 MB at 100k, identical on every rank), the EMA codebook (updated from
        # all-reduced statistics) and the PatchGAN's BatchNorm running statistics (never used: D
        # always runs in training mode); broadcasting them before every forward would only cost bandwidth.
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, ImageDataModule) and self.model.preprocessing.get("resize") != dm.resize:
            self.model.set_preprocessing(resize=dm.resize)  # the export records how its images were prepared
        if self.trainer.max_steps not in (-1, None):
            log.warning("trainer.max_steps=%d counts the steps of both optimizers; set model.optim.max_steps "
                        "(generator steps) instead", self.trainer.max_steps)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.gen_step >= self.schedule_steps()[1]:
            self.trainer.should_stop = True
            return -1
        return None

    def _images(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            return batch["images"]
        if isinstance(batch, (tuple, list)):
            return batch[0]
        return batch

    def _backward_local(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Backward without DDP's reducer, then average ``params``' gradients over ranks.

        Used for the discriminator: through the reducer (``find_unused_parameters``) every step
        would also all-reduce the whole generator's (unused) gradient buckets. ``no_sync`` (public DDP
        API) skips the reducer for this backward; the discriminator's own gradients (a few MB) are
        then averaged here with one all-reduce. Checked by tests/test_train_slow.py (2-process DDP:
        both ranks end with identical discriminator weights).
        """
        wrapped = self.trainer.strategy.model
        if not isinstance(wrapped, DistributedDataParallel) or not (dist.is_available() and dist.is_initialized()):
            self.manual_backward(loss)
            return
        with wrapped.no_sync():
            self.manual_backward(loss)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:  # one all-reduce of all the gradients, flattened into one buffer
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for g, r in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(r.view_as(g))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        images = self._images(batch)
        scale = 1.0
        if images.shape[0] == 0:  # every image of the batch was unreadable
            if self.trainer.world_size == 1:
                log.debug("batch %d has no readable image; skipped", batch_idx)
                self._empty_in_row += 1
                if self._empty_in_row >= EMPTY_BATCH_LIMIT:
                    raise ImageSourceError(_no_readable_images(self.trainer, f"{self._empty_in_row} batches in a row"))
                return None
            # Other ranks step: take part in the collectives with a zero-weighted dummy batch.
            images, scale = images.new_zeros(1, *images.shape[1:]), 0.0
        self._empty_in_row = 0
        self._readable_images += int(images.shape[0]) if scale else 0
        opt_g, opt_d = self.optimizers()  # type: ignore[attr-defined]
        lr_g = lr_d = self.optim_config.lr * self.lr_factor(self.gen_step)  # nanoGPT's way: no scheduler state
        set_lr(opt_g, lr_g)  # type: ignore[arg-type]
        set_lr(opt_d, lr_d)  # type: ignore[arg-type]
        gan = self.gan_active

        # Generator. (No toggle_optimizer: switching requires_grad off on the discriminator's
        # parameters breaks DDP's reducer with find_unused_parameters; the discriminator's gradients
        # of this backward are discarded by its zero_grad below.)
        out = self.model(images)
        g = self.objective.generator_loss(
            images, out.reconstruction, out.quantizer, last_layer=self.model.decoder.last_layer, gan_active=gan
        )
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g.loss * scale)
        opt_g.step()
        terms = dict(g.terms)
        if gan:  # discriminator, on the same batch
            fake = out.reconstruction.detach()  # the generator step's reconstruction (disc_input: reuse)
            if self.loss_config.disc_input == "reforward":
                with torch.no_grad():  # official: the whole VQ forward again, with the updated generator
                    fake = self.model(images).reconstruction
            d = self.objective.discriminator_step_loss(images, fake)
            opt_d.zero_grad(set_to_none=True)
            self._backward_local(d.loss * scale, list(self.objective.discriminator.parameters()))
            opt_d.step()
            terms.update(d.terms)

        self.gen_step += 1
        if self._train_usage is not None and scale:
            self._train_usage.add_counts(out.quantizer.counts)

        logs: dict[str, torch.Tensor | float] = {f"train/{k}": v for k, v in terms.items()}
        logs.update({"train/lr": lr_g, "train/lr_disc": lr_d, "train/gen_step": float(self.gen_step)})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=images.shape[0])
        self.log("rec", terms["rec_loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=images.shape[0])
        if self.gen_step >= self.schedule_steps()[1]:
            self.trainer.should_stop = True
        return {"loss": terms["loss"], "rec_loss": terms["rec_loss"]}

    def on_train_epoch_start(self) -> None:
        self._train_usage = CodebookUsage(self.model.codebook_size, device=self.device)
        self._readable_images = 0

    def on_train_epoch_end(self) -> None:
        # An epoch without one readable image would repeat forever (max_epochs -1, the step never moves).
        seen = torch.tensor(float(self._readable_images), device=self.device)
        if float(self.trainer.strategy.reduce(seen, reduce_op="sum")) == 0 and not self.trainer.should_stop:
            raise ImageSourceError(_no_readable_images(self.trainer, f"epoch {self.trainer.current_epoch}"))
        if self._train_usage is None:
            return
        self._train_usage.sync()
        logs = {"train/utilization": self._train_usage.utilization, "train/perplexity": self._train_usage.perplexity}
        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        if isinstance(dm, ImageDataModule):
            n = torch.tensor(float(len(dm.skipped)), device=self.device)
            logs["train/skipped_images"] = float(self.trainer.strategy.reduce(n, reduce_op="sum"))
        # Already summed over ranks: sync_dist only averages identical values (and silences Lightning).
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_usage = CodebookUsage(self.model.codebook_size, device=self.device)
        # sums of: rec loss, perceptual loss, quantizer loss, image count
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        images = self._images(batch)
        if images.shape[0] == 0:
            return None
        out = self.model(images)
        n = images.shape[0]
        rec = per_image_reconstruction_loss(images, out.reconstruction, self.loss_config.rec_loss).sum()
        p = torch.zeros((), device=images.device)
        if self.objective.perceptual is not None:
            p = self.objective.perceptual(images, out.reconstruction).float().sum()
        assert self._val_usage is not None and self._val_sums is not None
        self._val_usage.add_counts(out.quantizer.counts)
        self._val_sums += torch.stack([rec.double(), p.double(), out.quantizer.loss.double() * n,
                                       torch.tensor(float(n), dtype=torch.float64, device=images.device)])
        if batch_idx == 0 and self.num_grid_images > 0:
            k = self.num_grid_images
            return {"images": images[:k].detach(), "reconstruction": out.reconstruction[:k].detach()}
        return None

    def on_validation_epoch_end(self) -> None:
        if self._val_usage is None or self._val_sums is None:
            return
        self._val_usage.sync()  # utilisation over the whole split, summed over ranks
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        n = max(float(sums[3]), 1.0)
        logs = {
            "val/rec_loss": float(sums[0]) / n,
            "val/quantizer_loss": float(sums[2]) / n,
            "val/utilization": self._val_usage.utilization,
            "val/perplexity": self._val_usage.perplexity,
            "val/images": float(sums[3]),
        }
        if self.objective.perceptual is not None:
            logs["val/perceptual_loss"] = float(sums[1]) / n
        self.val_metrics = logs
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True)  # identical on every rank

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format_version": CHECKPOINT_VERSION,
            "gen_step": self.gen_step,
            "model_config": self.model.config.to_dict(),
            "provenance": self.model.provenance,
        }
        # The frozen LPIPS network comes from its own files; keep 59 MB of VGG out of every checkpoint.
        state = checkpoint.get("state_dict", {})
        for k in [k for k in state if k.startswith(_PERCEPTUAL_PREFIX)]:
            del state[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise CheckpointError("this checkpoint was not written by vqgan-lc train (no 'vqgan_lc' entry)")
        self.gen_step = int(meta["gen_step"])
        state = checkpoint.get("state_dict")
        if state is not None:
            for k, v in self.state_dict().items():
                if k.startswith(_PERCEPTUAL_PREFIX):
                    state[k] = v

    def export(self, directory: str | Path, *, inference_only: bool = False) -> Path:
        """Write the tokenizer as a model directory (``config.json`` + ``model.safetensors``)."""
        prov = {**self.model.provenance, "training": {"generator_steps": self.gen_step}}
        return self.model.save_pretrained(directory, inference_only=inference_only, provenance=prov)

