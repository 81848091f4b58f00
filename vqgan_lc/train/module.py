"""``VQGANLCModule``: VQGAN-LC (or a baseline quantizer) trained as the paper does, with Lightning.

One batch = one generator step, then one discriminator step on the same batch (manual
optimisation). Both optimizers are ``Adam(betas=(0.5, 0.9), eps=1e-7)`` with the same schedule:
linear warm-up from 0, then a half-cycle cosine to ``min_lr`` (official ``util/lr_sched.py``).

Step counting. ``gen_step`` is the number of generator steps taken so far; it is saved in every
checkpoint and restored on resume. It drives the schedule, ``disc_start`` and ``max_steps``.
(Lightning's ``global_step`` counts the steps of both optimizers, so it grows by 2 per batch once
the discriminator trains; ``trainer.max_steps`` and ``ModelCheckpoint(every_n_train_steps)``
therefore count optimizer steps, not batches.) The GAN is active for the batch processed when
``gen_step >= disc_start``: with ``disc_start = k`` the first ``k`` batches train the generator
alone and the discriminator first steps on batch ``k + 1`` (0-based batch ``k``), after exactly
``k`` generator steps. (The official code compares ``cur_iter > disc_start``, one step later.)
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from ..codebook import load_codebook
from ..config import ModelConfig, QuantizerKind
from ..errors import CheckpointError, CodebookError, MissingWeightsError
from ..losses import PerceptualLoss, VQGANLoss, per_image_reconstruction_loss
from ..model import VQGANLC
from ..quantize import CodebookUsage
from ..registry import get_config
from .schedule import lr_factor

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "vqgan_lc"
_PERCEPTUAL_PREFIX = "objective.perceptual."


class VQGANLCModule(pl.LightningModule):
    """The tokenizer, its PatchGAN and losses, and the two-player training step.

    Model (one of):
        preset: a registry name (``tiny``, ``vqgan-lc-f16-100k``, ``vqgan-lc-f8-100k``, ...).
        config: a full ``ModelConfig`` dict instead of a preset.
        overrides: fields changed on the preset/config (``quantizer`` may be a dict of its fields).
        quantizer: ``lc`` (VQGAN-LC), ``vq`` (taming), ``fc`` (factorised codes), ``ema``; default the
            preset's (``lc``).
        codebook_size: codebook size of the ``vq``/``fc``/``ema`` baselines (``lc`` takes it from the file).
        codebook: the frozen codebook file of the ``lc`` quantizer (ours ``.safetensors`` or the official
            ``codebook-100K.pth``); required for ``lc`` unless ``init_from`` is given.
        codebook_std: None (official): the codebook as in the file. A number: centre the codebook and
            scale it to this standard deviation before training (the model keeps the rescaled
            codebook; ignored with ``init_from``). Since the projector is linear this only changes its effective initialisation;
            it rescues codebooks whose features are far larger than the encoder's initial latents
            (pixel patches: with the official init every latent then picks the same code).
        init_from: a model directory (``save_pretrained`` / ``vqgan-lc convert``, full export) to
            fine-tune; its architecture and codebook are kept.

    Losses (official defaults): ``rec_loss`` ``l1`` (``l2`` is the paper's text) x ``rec_weight`` 1,
    LPIPS x ``perceptual_weight`` 1 (needs ``lpips_weights``: a local torchvision VGG16 file;
    ``lpips_lin_weights`` defaults to the file inside the lpips package), quantizer loss x
    ``quantizer_weight`` 0.1, hinge GAN x ``gan_weight`` 0.1 x adaptive weight (clamped to
    ``[0, adaptive_weight_max]``), on from ``disc_start`` generator steps. PatchGAN ``disc_layers`` 2,
    ``disc_ndf`` 64.

    Optimisation: ``lr`` 5e-4 (the paper and README; ``runTrainVQ.sh`` uses 1e-4), ``min_lr`` 0,
    warm-up ``warmup_steps`` generator steps, or ``warmup_epochs`` (official 5) x batches per epoch when
    ``warmup_steps`` is None; ``max_steps`` generator steps in all (None: ``trainer.max_epochs`` x
    batches per epoch). ``betas`` (0.5, 0.9), ``eps`` 1e-7, ``weight_decay`` 0.

    ``num_grid_images``: images per reconstruction grid (first validation batch).
    """

    def __init__(
        self,
        preset: str = "vqgan-lc-f16-100k",
        config: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        quantizer: QuantizerKind | None = None,
        codebook_size: int | None = None,
        codebook: str | None = None,
        codebook_std: float | None = None,
        init_from: str | None = None,
        rec_loss: Literal["l1", "l2"] = "l1",
        rec_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        quantizer_weight: float = 0.1,
        gan_weight: float = 0.1,
        disc_start: int = 50_000,
        adaptive_weight_max: float = 1e4,
        disc_loss: Literal["hinge", "vanilla"] = "hinge",
        disc_layers: int = 2,
        disc_ndf: int = 64,
        lr: float = 5e-4,
        min_lr: float = 0.0,
        warmup_steps: int | None = None,
        warmup_epochs: float = 5.0,
        max_steps: int | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        lpips_weights: str | None = None,
        lpips_lin_weights: str | None = None,
        num_grid_images: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if lr <= 0 or min_lr < 0 or min_lr > lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0; got lr={lr}, min_lr={min_lr}")
        if disc_start < 0:
            raise ValueError(f"disc_start must be >= 0, got {disc_start}")
        self.model = self._build_model()
        perceptual = None
        if perceptual_weight > 0:
            if lpips_weights is None:
                raise MissingWeightsError(
                    "the perceptual loss needs local VGG16 ImageNet weights: pass --model.lpips_weights "
                    "PATH/vgg16-397923af.pth, or turn the loss off with --model.perceptual_weight 0"
                )
            perceptual = PerceptualLoss(lpips_weights, lpips_lin_weights)
        else:
            log.info("perceptual (LPIPS) loss is off (perceptual_weight=0)")
        self.objective = VQGANLoss(
            perceptual=perceptual,
            rec_loss=rec_loss,
            rec_weight=rec_weight,
            perceptual_weight=perceptual_weight,
            quantizer_weight=quantizer_weight,
            gan_weight=gan_weight,
            adaptive_weight_max=adaptive_weight_max,
            disc_loss=disc_loss,
            disc_layers=disc_layers,
            disc_ndf=disc_ndf,
        )
        self.gen_step = 0  # generator steps taken; persisted in checkpoints
        self._schedule: tuple[int, int] | None = None  # (warmup_steps, max_steps), resolved lazily
        self._val_usage: CodebookUsage | None = None
        self._val_sums: torch.Tensor | None = None
        self._train_usage: CodebookUsage | None = None
        self.val_metrics: dict[str, float] = {}  # the last validation epoch's numbers

    # ------------------------------------------------------------------ the model
    def _build_model(self) -> VQGANLC:
        hp = self.hparams
        if hp.init_from is not None:
            if hp.codebook is not None:
                raise CodebookError(
                    "give either --model.init_from (a model directory, which keeps its own codebook) "
                    "or --model.codebook, not both"
                )
            if hp.config is not None or hp.overrides or hp.codebook_size is not None:
                raise ValueError("--model.init_from fixes the architecture; drop config/overrides/codebook_size")
            if hp.codebook_std is not None:
                log.warning("codebook_std=%g ignored: %s keeps the codebook it was trained with",
                            hp.codebook_std, hp.init_from)
            model = VQGANLC.from_pretrained(hp.init_from)
            if model.inference_only:
                raise CheckpointError(
                    f"{hp.init_from} is an inference-only export (projected codes only); fine-tuning needs the "
                    "full export with the raw codebook and projector (save_pretrained without inference_only, "
                    "or `vqgan-lc convert` without --inference-only)"
                )
            if hp.quantizer is not None and hp.quantizer != model.config.quantizer.kind:
                raise ValueError(
                    f"{hp.init_from} has a {model.config.quantizer.kind!r} quantizer, not {hp.quantizer!r}"
                )
            model.provenance = {**getattr(model, "provenance", {}), "fine_tuned_from": str(hp.init_from)}
            log.info("fine-tuning %s (%s quantizer, %d codes)", hp.init_from, model.config.quantizer.kind,
                     model.codebook_size)
            return model.train()
        cfg = ModelConfig.from_dict(dict(hp.config)) if hp.config is not None else get_config(hp.preset)
        if hp.overrides:
            cfg = cfg.replace(**dict(hp.overrides))
        if hp.quantizer is not None:
            cfg = cfg.replace(quantizer={"kind": hp.quantizer})
        if hp.codebook_size is not None:
            if cfg.quantizer.kind == "lc":
                raise ValueError("the 'lc' codebook size comes from the codebook file; drop --model.codebook_size")
            cfg = cfg.replace(quantizer={"codebook_size": hp.codebook_size})
        if cfg.quantizer.kind == "lc":
            if hp.codebook is None:
                raise CodebookError(
                    "the 'lc' quantizer needs its frozen codebook: pass --model.codebook FILE (made by "
                    "`vqgan-lc build-codebook`, or the official codebook-100K.pth), or fine-tune a model "
                    "directory with --init-from DIR"
                )
            cb = load_codebook(hp.codebook)
            vectors, prov = cb.vectors, {"file": Path(hp.codebook).name, **cb.provenance}
            if hp.codebook_std is not None:
                if hp.codebook_std <= 0:
                    raise ValueError(f"codebook_std must be > 0, got {hp.codebook_std}")
                centred = vectors - vectors.mean(0, keepdim=True)
                vectors = centred * (hp.codebook_std / centred.std().clamp_min(1e-12))
                prov["rescaled"] = {"centred": True, "std": hp.codebook_std}
                log.info("codebook centred and scaled to std %g (--model.codebook_std)", hp.codebook_std)
            model = VQGANLC.from_config(cfg, codebook=vectors)
            model.provenance = {"codebook": prov}
            return model
        if hp.codebook is not None:
            raise CodebookError(
                f"--model.codebook is only used by the 'lc' quantizer; the {cfg.quantizer.kind!r} baseline "
                "learns its codebook"
            )
        return VQGANLC(cfg)

    @property
    def gan_active(self) -> bool:
        """Whether this batch trains the discriminator and adds the adversarial term (``gen_step >= disc_start``)."""
        return self.hparams.gan_weight > 0 and self.gen_step >= self.hparams.disc_start

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        kw = dict(lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)
        gen_params = [p for p in self.model.parameters() if p.requires_grad]
        opt_g = torch.optim.Adam(gen_params, **kw)
        opt_d = torch.optim.Adam(self.objective.discriminator.parameters(), **kw)
        sched_g = LambdaLR(opt_g, lambda s: self.lr_factor(s))
        sched_d = LambdaLR(opt_d, lambda s: self.lr_factor(s))
        return [opt_g, opt_d], [sched_g, sched_d]

    def schedule_steps(self) -> tuple[int, int]:
        """``(warmup_steps, max_steps)`` in generator steps, resolved from epochs when needed."""
        if self._schedule is None:
            hp = self.hparams
            per_epoch: int | None = None

            def batches_per_epoch() -> int:
                trainer = self.trainer
                if trainer.train_dataloader is None:
                    trainer.fit_loop.setup_data()
                n = trainer.num_training_batches
                if not math.isfinite(n) or n <= 0:
                    raise ValueError("cannot count the batches of an epoch; set --model.max_steps and "
                                     "--model.warmup_steps in generator steps")
                return int(n)

            max_steps = hp.max_steps
            if max_steps is None:
                epochs = self.trainer.max_epochs
                if epochs is None or epochs < 0:
                    raise ValueError("set --model.max_steps (generator steps) or --trainer.max_epochs")
                per_epoch = batches_per_epoch()
                max_steps = epochs * per_epoch
            warmup = hp.warmup_steps
            if warmup is None:
                per_epoch = per_epoch or batches_per_epoch()
                warmup = round(hp.warmup_epochs * per_epoch)
            self._schedule = (int(warmup), int(max_steps))
            log.info("schedule: %d warm-up + cosine to %d generator steps; GAN from step %d",
                     warmup, max_steps, hp.disc_start)
        return self._schedule

    def lr_factor(self, step: int) -> float:
        warmup, max_steps = self.schedule_steps()
        return lr_factor(step, warmup_steps=warmup, max_steps=max_steps,
                         min_lr_ratio=self.hparams.min_lr / self.hparams.lr)

    def on_fit_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel):
            # The only buffers are the frozen codebook (307 MB at 100k, identical on every rank), the
            # EMA codebook (updated from all-reduced statistics) and the PatchGAN's BatchNorm running
            # statistics (never used: D always runs in training mode). Broadcasting them before every
            # forward, DDP's default, would only cost bandwidth.
            for attr in ("forward_sync_buffers", "broadcast_buffers"):
                if hasattr(wrapped, attr):
                    setattr(wrapped, attr, False)
        if self.trainer.max_steps not in (-1, None):
            log.warning("trainer.max_steps=%d counts the steps of both optimizers; set model.max_steps "
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
        would also all-reduce the whole generator's (unused) gradient buckets.
        """
        wrapped = self.trainer.strategy.model
        if not isinstance(wrapped, DistributedDataParallel) or not (dist.is_available() and dist.is_initialized()):
            self.manual_backward(loss)
            return
        with wrapped.no_sync():
            self.manual_backward(loss)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for g, r in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(r)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        images = self._images(batch)
        scale = 1.0
        if images.shape[0] == 0:  # every image of the batch was unreadable
            if self.trainer.world_size == 1:
                log.debug("batch %d has no readable image; skipped", batch_idx)
                return None
            # Other ranks step: take part in the collectives with a zero-weighted dummy batch.
            images, scale = images.new_zeros(1, *images.shape[1:]), 0.0
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
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
        if gan:  # discriminator, on the same batch and the generator step's reconstruction
            d = self.objective.discriminator_step_loss(images, out.reconstruction.detach())
            opt_d.zero_grad(set_to_none=True)
            self._backward_local(d.loss * scale, list(self.objective.discriminator.parameters()))
            opt_d.step()
            terms.update(d.terms)

        lr_g, lr_d = opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]
        sched_g.step()
        with warnings.catch_warnings():  # the discriminator's scheduler runs before its first step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            sched_d.step()
        self.gen_step += 1
        if self._train_usage is not None and scale:
            self._train_usage.add_counts(out.quantizer.counts)

        logs = {f"train/{k}": v for k, v in terms.items()}
        logs.update({"train/lr": lr_g, "train/lr_disc": lr_d, "train/gen_step": float(self.gen_step)})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=images.shape[0])
        self.log("rec", terms["rec_loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=images.shape[0])
        if self.gen_step >= self.schedule_steps()[1]:
            self.trainer.should_stop = True
        return {"loss": terms["loss"], "rec_loss": terms["rec_loss"]}

    def on_train_epoch_start(self) -> None:
        self._train_usage = CodebookUsage(self.model.codebook_size, device=self.device)

    def on_train_epoch_end(self) -> None:
        if self._train_usage is None:
            return
        self._train_usage.sync()
        logs = {"train/utilization": self._train_usage.utilization, "train/perplexity": self._train_usage.perplexity}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "skipped"):
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
        rec = per_image_reconstruction_loss(images, out.reconstruction, self.hparams.rec_loss).sum()
        p = torch.zeros((), device=images.device)
        if self.objective.perceptual is not None:
            p = self.objective.perceptual(images, out.reconstruction).float().sum()
        assert self._val_usage is not None and self._val_sums is not None
        self._val_usage.add_counts(out.quantizer.counts)
        self._val_sums += torch.stack([rec.double(), p.double(), out.quantizer.loss.double() * n,
                                       torch.tensor(float(n), dtype=torch.float64, device=images.device)])
        if batch_idx == 0 and self.hparams.num_grid_images > 0:
            k = self.hparams.num_grid_images
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
            "format_version": 1,
            "gen_step": self.gen_step,
            "model_config": self.model.config.to_dict(),
            "provenance": getattr(self.model, "provenance", {}),
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
        prov = {**getattr(self.model, "provenance", {}), "training": {"generator_steps": self.gen_step}}
        return self.model.save_pretrained(directory, inference_only=inference_only, provenance=prov)


def export_checkpoint(checkpoint: str | Path, directory: str | Path, *, inference_only: bool = False) -> Path:
    """Turn a training checkpoint (``.ckpt`` of ``vqgan-lc train``) into a model directory.

    The checkpoint is read with ``torch.load(weights_only=True)``; only the tokenizer's weights
    (``model.*``) are kept.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e})") from e
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} was not written by vqgan-lc train (no '{CHECKPOINT_KEY}' entry)")
    model = VQGANLC(ModelConfig.from_dict(meta["model_config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict_checked(state, source=str(path))
    prov = {**meta.get("provenance", {}), "training": {"generator_steps": int(meta["gen_step"]), "checkpoint": path.name}}
    return model.save_pretrained(directory, inference_only=inference_only, provenance=prov)
