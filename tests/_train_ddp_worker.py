"""Helper of tests/test_train_slow.py, run as a script: Lightning's DDP launcher re-executes it per rank.

    python tests/_train_ddp_worker.py MODE DEVICES PHOTOS MODEL_DIR OUT_JSON

MODE ``validate``: one validation pass of a fixed model directory; rank 0 writes the logged metrics.
MODE ``fit``: 3 generator steps, GAN from the second; every rank writes checksums of its weights.
"""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from vqgan_lc.build import ModelSpec
from vqgan_lc.train import ImageDataModule, LossConfig, OptimConfig, VQGANLCModule


class BufferSync(Callback):
    """Records whether DDP still broadcasts buffers before each forward (DDPStrategy(broadcast_buffers=False))."""

    value: bool | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ddp = trainer.strategy.model
        BufferSync.value = bool(getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None)))


def main() -> None:
    mode, devices, photos, model_dir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = VQGANLCModule(model=ModelSpec(init_from=model_dir), loss=LossConfig(perceptual_weight=0.0, disc_start=0),
                           optim=OptimConfig(warmup_steps=0, max_steps=3))
    dm = ImageDataModule(photos, image_size=32, batch_size=2, val_batch_size=3, num_workers=0, samples_per_epoch=8)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices,
        # as the shipped multi-GPU configs: the frozen codebook is not re-broadcast before every forward
        strategy=DDPStrategy(find_unused_parameters=True, broadcast_buffers=False) if devices > 1 else "auto",
        max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0 if mode == "fit" else None,
        default_root_dir=out + ".run", callbacks=[BufferSync()],
    )
    if mode == "validate":
        trainer.validate(module, datamodule=dm, verbose=False)
        if trainer.is_global_zero:
            with open(out, "w") as f:
                json.dump(module.val_metrics, f)
        return
    trainer.fit(module, datamodule=dm)
    with torch.no_grad():
        sums = {
            "gen_step": module.gen_step,
            "generator": float(sum(p.double().sum() for p in module.model.parameters())),
            "discriminator": float(sum(p.double().sum() for p in module.objective.discriminator.parameters())),
            "disc_adam_steps": int(next(iter(trainer.optimizers[1].state.values()), {"step": 0})["step"]),
            "sync_buffers": BufferSync.value,
        }
    with open(f"{out}.rank{trainer.global_rank}", "w") as f:
        json.dump(sums, f)


if __name__ == "__main__":
    main()
