"""Slow training tests (CI runs them): the tiny recipe learns on the photographs; 2-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from train_helpers import (
    data_module,
    single_thread,  # noqa: F401 - an autouse fixture: one intra-op thread
    trainer,
    write_codebook,
    write_photos,
)

from vqgan_lc import create_model
from vqgan_lc.build import ModelSpec
from vqgan_lc.configs import config_path
from vqgan_lc.train import LossConfig, OptimConfig, VQGANLCModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_recipe_lowers_the_reconstruction_loss_on_the_photographs(tmp_path: Path) -> None:
    """150 generator steps of the shipped tiny_cpu recipe (at 32 px, batches of 4, GAN from step 100) cut the
    validation L1 loss on the seven photographs to less than half of the untrained model's."""
    recipe = yaml.safe_load(config_path("tiny_cpu").read_text())
    photos = write_photos(tmp_path / "photos")[0].parent
    m = recipe["model"]
    pl.seed_everything(recipe["seed_everything"], verbose=False)
    module = VQGANLCModule(
        model=ModelSpec(**{**m["model"], "codebook": str(write_codebook(tmp_path / "codebook.safetensors"))}),
        loss=LossConfig(**{**m["loss"], "disc_start": 100}), optim=OptimConfig(**{**m["optim"], "max_steps": 150}),
        num_grid_images=m["num_grid_images"])
    dm = data_module(photos, batch_size=4, samples_per_epoch=200, val_batch_size=7)
    t = trainer(tmp_path)
    t.validate(module, datamodule=dm, verbose=False)
    before = dict(module.val_metrics)
    t.fit(module, datamodule=dm)
    after = module.val_metrics
    assert module.gen_step == 150 and t.global_step == 150 + 49  # D steps while gen_step > 100 (official `>`)
    assert after["val/rec_loss"] < 0.5 * before["val/rec_loss"], (before, after)  # measured: 0.584 -> 0.214
    assert after["val/utilization"] > 0


def _ddp(mode: str, devices: int, photos: Path, model_dir: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    subprocess.run([sys.executable, str(ROOT / "tests" / "_train_ddp_worker.py"), mode, str(devices), str(photos),
                    str(model_dir), str(out)], check=True, env=env, cwd=str(ROOT), timeout=600,
                   capture_output=True)


@pytest.fixture(scope="module")
def ddp_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    model = create_model("tiny", codebook=torch.randn(1024, 768) * 0.03)
    return {"photos": write_photos(root / "photos")[0].parent, "model": model.save_pretrained(root / "model"),
            "root": root}


@pytest.mark.slow
def test_two_process_ddp_reports_the_same_usage_as_one_process(ddp_files: dict[str, Path]) -> None:
    """7 validation images over 2 gloo ranks (4 + 3, the shorter shard padded with a dropped slot)."""
    one, two = ddp_files["root"] / "one.json", ddp_files["root"] / "two.json"
    _ddp("validate", 1, ddp_files["photos"], ddp_files["model"], one)
    _ddp("validate", 2, ddp_files["photos"], ddp_files["model"], two)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["val/images"] == b["val/images"] == 7
    assert a["val/utilization"] == b["val/utilization"] > 0
    assert a["val/perplexity"] == pytest.approx(b["val/perplexity"], rel=1e-12)
    assert a["val/rec_loss"] == pytest.approx(b["val/rec_loss"], rel=1e-6)


@pytest.mark.slow
def test_two_process_ddp_training_keeps_the_ranks_identical(ddp_files: dict[str, Path]) -> None:
    """3 steps on 2 ranks with the GAN from step 1: both players' weights stay equal across ranks (the
    discriminator's gradients are all-reduced outside DDP's reducer)."""
    out = ddp_files["root"] / "fit.json"
    _ddp("fit", 2, ddp_files["photos"], ddp_files["model"], out)
    r0, r1 = (json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1))
    assert r0 == r1
    assert r0["gen_step"] == 3 and r0["disc_adam_steps"] == 2 and r0["sync_buffers"] is False
