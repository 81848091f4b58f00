"""Callbacks of ``vqgan-lc train``: reconstruction grids and model-directory exports.

Both write into the run directory, ``trainer.default_root_dir`` (so a resumed run keeps writing to
the same place): ``reconstructions/step-NNNNNNN.png`` and ``model/`` (``model-step-NNNNNNN/``).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..errors import ConfigError
from .module import VQGANLCModule

log = logging.getLogger(__name__)


def _vqgan(pl_module: pl.LightningModule) -> VQGANLCModule:
    """The module these callbacks serve; anything else is a usage error."""
    if not isinstance(pl_module, VQGANLCModule):
        raise TypeError(f"this callback works with VQGANLCModule, not {type(pl_module).__name__}")
    return pl_module


def reconstruction_grid(images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Originals (top row) over reconstructions (bottom row): ``(3, 2*H + 6, n*W + 2*(n+1))`` uint8.

    Inputs are ``(n, 3, H, W)`` in [-1, 1]; reconstructions are clamped.
    """
    from torchvision.utils import make_grid

    both = torch.cat([images.float(), reconstruction.float()]).clamp(-1, 1).add(1).div(2).cpu()
    grid = make_grid(both, nrow=images.shape[0], padding=2, pad_value=1.0)
    return grid.mul(255).round().to(torch.uint8)


class ReconstructionGrid(Callback):
    """After each validation epoch: a grid of the first validation images over their reconstructions.

    Saved as ``<run dir>/reconstructions/step-NNNNNNN.png`` (generator step) and sent to every logger
    that can show images (TensorBoard: ``val/reconstructions``). Rank 0 only; skipped in the sanity check.
    """

    def __init__(self, every_n_epochs: int = 1, save_png: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.save_png = save_png
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and isinstance(outputs, dict) and "reconstruction" in outputs:
            self._pending = (outputs["images"].detach().cpu(), outputs["reconstruction"].detach().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.every_n_epochs > 1 and trainer.current_epoch % self.every_n_epochs:
            return
        grid = reconstruction_grid(*pending)
        step = _vqgan(pl_module).gen_step  # our counter; Lightning's global_step counts both optimizers' steps
        if self.save_png:
            from PIL import Image

            out = Path(trainer.default_root_dir) / "reconstructions" / f"step-{step:07d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
            self.last_path = out
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", grid, global_step=step)


class ExportModel(Callback):
    """Export the tokenizer as a model directory at the end of training and every ``every_n_steps``.

    Writes ``<run dir>/<dirname>`` at the end (the full export, which can be fine-tuned again), plus
    ``<run dir>/<dirname>-inference`` with ``inference_only`` (projected codes only, 3.2 MB at 100k).
    ``every_n_steps`` (generator steps) adds ``<run dir>/<dirname>-step-NNNNNNN``. Rank 0 only.
    """

    def __init__(self, dirname: str = "model", every_n_steps: int | None = None, inference_only: bool = False,
                 at_train_end: bool = True) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.dirname = dirname
        self.every_n_steps = every_n_steps
        self.inference_only = inference_only
        self.at_train_end = at_train_end
        self.exported: list[Path] = []

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        if not trainer.is_global_zero:
            return
        module = _vqgan(pl_module)
        root = Path(trainer.default_root_dir)
        path = module.export(root / name)
        self.exported.append(path)
        if self.inference_only and module.model.config.quantizer.kind == "lc":
            self.exported.append(module.export(root / f"{name}-inference", inference_only=True))
        log.info("exported the model directory %s (generator step %d)", path, module.gen_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = _vqgan(pl_module).gen_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and outputs is not None:
            self._export(trainer, pl_module, f"{self.dirname}-step-{step:07d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end:
            self._export(trainer, pl_module, self.dirname)


class StepProgress(Callback):
    """Log ``generator step k/N, steps/s, time left`` every ``every_n_steps`` generator steps.

    Lightning's progress bar counts batches per epoch; with ``max_epochs: -1`` and a run that ends at
    ``model.max_steps`` it cannot say how long the run has left. This callback can (rank 0 only).
    ``label`` prefixes each line.
    """

    def __init__(self, every_n_steps: int = 50, label: str = "train") -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps = every_n_steps
        self.label = label
        self._t0: float | None = None
        self._step0 = 0
        self.lines: list[str] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        self._t0, self._step0 = time.perf_counter(), _vqgan(pl_module).gen_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        import time

        module = _vqgan(pl_module)
        step = module.gen_step
        if not trainer.is_global_zero or self._t0 is None or step % self.every_n_steps or outputs is None:
            return
        total = module.schedule_steps()[1]
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / max(elapsed, 1e-9)
        left = max(total - step, 0) / rate if rate > 0 else float("nan")
        loss = outputs.get("rec_loss") if isinstance(outputs, dict) else None
        line = (f"{self.label}: step {step}/{total}  {rate:.1f} steps/s  about {_duration(left)} left"
                + (f"  rec loss {float(loss):.4f}" if loss is not None else ""))
        self.lines.append(line)
        log.info("%s", line)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class PeriodicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``last.ckpt`` on every trigger, with triggers that combine.

    Lightning 2.6's ``ModelCheckpoint`` writes ``last.ckpt`` only after a top-k save (so never with
    ``save_top_k: 0`` and ``every_n_epochs``), ignores ``train_time_interval`` under manual
    optimisation (``VQGANLCModule``'s), and refuses ``every_n_train_steps`` together with
    ``train_time_interval``. Here ``last.ckpt`` is written after the first batch whose
    ``trainer.global_step`` reaches the next multiple of ``every_n_train_steps`` (robust to the step
    growing by 2 per batch once the discriminator trains: ``global_step`` counts both optimizers'
    steps), after ``train_time_interval`` of wall time since the last save, and at the end of every
    ``every_n_epochs``-th epoch, any of them may be set; and always when training ends. Top-k saving
    (``save_top_k`` > 0) follows the same triggers.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = 0,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        if train_time_interval is not None and train_time_interval.total_seconds() <= 0:
            raise ConfigError(f"checkpoint.train_time_interval must be positive, got {train_time_interval}; "
                              "give e.g. 0:30:00 or null")
        # The parent accepts one trigger: give it the epochs only and keep steps and time here.
        super().__init__(
            dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
            save_top_k=save_top_k, save_on_exception=save_on_exception, save_weights_only=save_weights_only,
            mode=mode, auto_insert_metric_name=auto_insert_metric_name, every_n_epochs=every_n_epochs or 0,
            save_on_train_epoch_end=save_on_train_epoch_end, enable_version_counter=enable_version_counter,
        )
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self._every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        self._step_bucket_saved = 0  # global_step // every_n_train_steps at the last step-triggered save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._every_n_train_steps:  # after a resume: the next multiple after the restored step
            self._step_bucket_saved = trainer.global_step // self._every_n_train_steps

    def _save_all(self, trainer: pl.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        due = False
        if self._every_n_train_steps:
            bucket = trainer.global_step // self._every_n_train_steps
            due = bucket > self._step_bucket_saved
        if self._train_time_interval is not None:
            started = self._last_time_checked
            late = started is not None and time.monotonic() - started >= self._train_time_interval.total_seconds()
            due = bool(trainer.strategy.broadcast(due or late))  # rank 0's clock decides for every rank
        if not due:
            return
        self._save_all(trainer)
        self._last_time_checked = time.monotonic()
        if self._every_n_train_steps:
            self._step_bucket_saved = trainer.global_step // self._every_n_train_steps

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
                and self._epoch_due(trainer)):
            self._save_all(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer)
                and self._epoch_due(trainer)):
            self._save_all(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The parent writes last.ckpt here only when it never wrote one; the final state is always kept.
        if self.save_last and self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:  # type: ignore[attr-defined]
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
