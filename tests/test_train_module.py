"""VQGANLCModule with a real Trainer on CPU: step counting, both optimizers, frozen codebook, resume, export,
validation usage, fine-tuning, the baselines, and unreadable images. Tiny preset, 32 px, batches of 2."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from train_helpers import (  # noqa: F401 - single_thread is an autouse fixture
    adam_steps,
    center_crops,
    data_module,
    single_thread,
    tiny_module,
    trainer,
    write_codebook,
    write_photos,
    write_truncated_jpeg,
)

from vqgan_lc import VQGANLC, CheckpointError, CodebookError, MissingWeightsError
from vqgan_lc.export import export_checkpoint
from vqgan_lc.quantize import CodebookUsage
from vqgan_lc.train import ExportModel, ReconstructionGrid


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    photos = write_photos(root / "photos")[0].parent
    return {"photos": photos, "codebook": write_codebook(root / "codebook.safetensors")}


class Record(Callback):
    """After every batch: the counters and optimizer step counts, and the batch's loss."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = trainer.optimizers
        self.rows.append({
            "gen_step": module.gen_step, "global_step": trainer.global_step, "g": adam_steps(opt_g),
            "d": adam_steps(opt_d), "loss": float(outputs["loss"]), "lr": opt_g.param_groups[0]["lr"],
            "epoch": trainer.current_epoch, "paths": list(batch["paths"]),
        })


class CheckpointAndStop(Callback):
    """Save a checkpoint after ``step`` generator steps (as ModelCheckpoint does mid-epoch), then stop."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if module.gen_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def test_discriminator_first_steps_once_gen_step_exceeds_disc_start(files: dict[str, Path], tmp_path: Path) -> None:
    # Official engine_training_vqgan.py: `cur_iter > disc_start` on the 0-based iteration, so with
    # disc_start 2 batches 0, 1, 2 train the generator alone and D first steps on batch 3.
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], disc_start=2, max_steps=5)
    g0 = [p.detach().clone() for p in module.model.parameters()]
    d0 = [p.detach().clone() for p in module.objective.discriminator.parameters()]
    rec = Record()
    t = trainer(tmp_path, callbacks=[rec], limit_val_batches=0)
    t.fit(module, datamodule=data_module(files["photos"]))
    got = [(r["gen_step"], r["g"], r["d"], r["global_step"]) for r in rec.rows]
    # (generator steps, Adam steps of G, Adam steps of D, Lightning's global_step = both optimizers)
    assert got == [(1, 1, 0, 1), (2, 2, 0, 2), (3, 3, 0, 3), (4, 4, 1, 5), (5, 5, 2, 7)]
    assert module.gen_step == 5 and t.global_step == 7
    assert all(not torch.equal(a, b) for a, b in zip(g0, module.model.parameters()) if a.numel() > 8)
    assert sum(not torch.equal(a, b) for a, b in zip(d0, module.objective.discriminator.parameters())) == len(d0)
    assert "train/d_loss" in t.callback_metrics and "train/d_weight" in t.callback_metrics


def test_projector_learns_and_the_frozen_codebook_does_not_change(files: dict[str, Path], tmp_path: Path) -> None:
    from vqgan_lc.codebook import load_codebook

    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], disc_start=1, max_steps=3)
    q = module.model.quantize
    w0 = q.projection.weight.detach().clone()
    assert not q.codebook.requires_grad and "quantize.codebook" in dict(module.model.named_buffers())
    t = trainer(tmp_path, limit_val_batches=0)
    t.fit(module, datamodule=data_module(files["photos"]))
    assert torch.equal(q.codebook, load_codebook(files["codebook"]).vectors)
    assert float((q.projection.weight.detach() - w0).abs().max()) > 0
    opt_g = t.optimizers[0]
    opt_params = {id(p) for group in opt_g.param_groups for p in group["params"]}
    assert id(q.projection.weight) in opt_params and id(q.codebook) not in opt_params
    # one generator loss: the projector gets a gradient (the codebook loss), the codebook none
    module.model.zero_grad(set_to_none=True)
    x = center_crops(files["photos"], 32)[:2]
    out = module.model(x)
    module.objective.generator_loss(x, out.reconstruction, out.quantizer).loss.backward()
    assert q.projection.weight.grad is not None and float(q.projection.weight.grad.abs().sum()) > 0
    assert q.codebook.grad is None


@pytest.mark.parametrize("stop_at", [4, 3], ids=["epoch-boundary", "mid-epoch"])
def test_resume_gives_the_same_counter_and_next_loss_as_an_unbroken_run(files: dict[str, Path], tmp_path: Path,
                                                                        stop_at: int) -> None:
    def run(root: Path, callbacks: list[Callback], ckpt: Path | None = None) -> tuple[Any, pl.Trainer]:
        pl.seed_everything(0, verbose=False)
        module = tiny_module(files["codebook"], disc_start=2, warmup_steps=2, max_steps=6)
        t = trainer(root, callbacks=callbacks, limit_val_batches=0)  # 4 batches per epoch
        t.fit(module, datamodule=data_module(files["photos"]), ckpt_path=str(ckpt) if ckpt else None)
        return module, t

    full = Record()
    run(tmp_path / "full", [full])
    first = Record()
    ckpt = tmp_path / "part" / "step.ckpt"
    run(tmp_path / "part", [first, CheckpointAndStop(stop_at, ckpt)])
    assert [r["gen_step"] for r in first.rows] == list(range(1, stop_at + 1))
    rest = Record()
    module, t = run(tmp_path / "part", [rest], ckpt)
    assert [r["gen_step"] for r in rest.rows] == list(range(stop_at + 1, 7))
    assert module.gen_step == 6 and t.global_step == full.rows[-1]["global_step"]
    nxt, ref = rest.rows[0], full.rows[stop_at]
    assert nxt["paths"] == ref["paths"] and nxt["lr"] == ref["lr"] and nxt["d"] == ref["d"]
    assert nxt["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-7)
    assert rest.rows[-1]["loss"] == pytest.approx(full.rows[-1]["loss"], rel=1e-5, abs=1e-6)


def test_validation_reports_usage_over_the_whole_split(files: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"])
    t = trainer(tmp_path)
    t.validate(module, datamodule=data_module(files["photos"], val_batch_size=3), verbose=False)
    x = center_crops(files["photos"], 32)
    module.model.eval()
    with torch.no_grad():
        out = module.model(x)
    usage = CodebookUsage(module.model.codebook_size)
    usage.update(out.quantizer.ids)
    m = module.val_metrics
    assert m["val/images"] == 7
    assert m["val/utilization"] == usage.utilization and usage.used > 10
    assert m["val/perplexity"] == pytest.approx(usage.perplexity, rel=1e-9)
    assert m["val/rec_loss"] == pytest.approx(float((out.reconstruction - x).abs().mean()), rel=1e-5)


def test_logging_grid_checkpoint_and_export(files: dict[str, Path], tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], max_steps=4, warmup_steps=2)
    grid, export = ReconstructionGrid(), ExportModel(every_n_steps=2, inference_only=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0)
    t = trainer(tmp_path, callbacks=[grid, export, ckpt], enable_checkpointing=True, logger=CSVLogger(tmp_path))
    t.fit(module, datamodule=data_module(files["photos"], samples_per_epoch=4, val_batch_size=4))  # val each epoch
    metrics = (Path(t.logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for key in ("train/rec_loss", "train/lr", "train/lr_disc", "val/utilization", "val/perplexity", "val/rec_loss",
                "train/utilization"):
        assert key in header
    assert len([line for line in metrics[1:] if line.split(",")[header.index("val/utilization")]]) == 2
    png = tmp_path / "reconstructions" / "step-0000004.png"
    from PIL import Image

    assert Image.open(png).size == (4 * 32 + 2 * 5, 2 * 32 + 2 * 3)  # 4 originals over 4 reconstructions
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model")) == [
        "model", "model-inference", "model-step-0000002", "model-step-0000002-inference",
        "model-step-0000004", "model-step-0000004-inference"]
    exported = VQGANLC.from_pretrained(tmp_path / "model")
    assert exported.config_hash() == module.model.config_hash()
    assert VQGANLC.from_pretrained(tmp_path / "model-inference").inference_only
    x = center_crops(files["photos"], 32)
    module.model.eval()
    assert torch.equal(exported.encode(x), module.model.encode(x))
    # the checkpoint holds the counter and no LPIPS weights; exporting it gives the same model
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["vqgan_lc"]["gen_step"] == 4
    assert not [k for k in state["state_dict"] if "perceptual" in k]
    again = VQGANLC.from_pretrained(export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt"))
    assert torch.equal(again.encode(x), exported.encode(x))


def test_fine_tune_from_a_model_directory(files: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(1, verbose=False)
    base = tiny_module(files["codebook"]).model
    base.save_pretrained(tmp_path / "base")
    base.save_pretrained(tmp_path / "base-inference", inference_only=True)
    module = tiny_module(None, init_from=str(tmp_path / "base"), max_steps=2)
    for (k, a), b in zip(base.state_dict().items(), module.model.state_dict().values()):
        assert torch.equal(a, b), k
    trainer(tmp_path, limit_val_batches=0).fit(module, datamodule=data_module(files["photos"]))
    assert module.gen_step == 2
    assert torch.equal(module.model.quantize.codebook, base.quantize.codebook)
    assert not torch.equal(module.model.quantize.projection.weight, base.quantize.projection.weight)
    assert module.model.provenance["fine_tuned_from"] == str(tmp_path / "base")
    with pytest.raises(CheckpointError, match="inference-only export"):
        tiny_module(None, init_from=str(tmp_path / "base-inference"))
    with pytest.raises(CodebookError, match="not both"):
        tiny_module(files["codebook"], init_from=str(tmp_path / "base"))


def test_configuration_errors_are_one_clear_sentence(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(MissingWeightsError) as e:
        tiny_module(files["codebook"], perceptual_weight=1.0)
    msg = str(e.value)
    assert "--model.loss.lpips_weights" in msg and "--model.loss.perceptual_weight 0" in msg and msg.count(". ") == 0
    with caplog.at_level(logging.INFO, logger="vqgan_lc.train.module"):
        tiny_module(files["codebook"], perceptual_weight=0.0)
    assert any("perceptual (LPIPS) loss is off" in r.message for r in caplog.records)
    with pytest.raises(CodebookError, match="--model.model.codebook FILE"):
        tiny_module(None)
    with pytest.raises(CodebookError, match="only used by the 'lc' quantizer"):
        tiny_module(files["codebook"], quantizer="vq")


def test_codebook_std_centres_and_rescales_the_frozen_codebook(files: dict[str, Path]) -> None:
    from vqgan_lc.codebook import load_codebook

    raw = load_codebook(files["codebook"]).vectors
    module = tiny_module(files["codebook"], codebook_std=0.5)
    c = module.model.quantize.codebook
    assert float(c.mean(0).abs().max()) < 1e-6 and float(c.std()) == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(c, (raw - raw.mean(0)) * (0.5 / (raw - raw.mean(0)).std()), atol=1e-6)
    assert module.model.provenance["codebook"]["rescaled"] == {"centred": True, "std": 0.5}
    assert torch.equal(tiny_module(files["codebook"]).model.quantize.codebook, raw)  # default: as in the file


def test_perceptual_loss_from_local_vgg_file(files: dict[str, Path], tmp_path: Path) -> None:
    from torchvision.models import vgg16

    torch.manual_seed(0)
    vgg = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}, vgg)
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], perceptual_weight=1.0, lpips_weights=str(vgg), max_steps=2)
    rec = Record()
    trainer(tmp_path, callbacks=[rec], limit_val_batches=1).fit(module, datamodule=data_module(files["photos"]))
    assert module.gen_step == 2
    assert float(trainer_metric(module, "train/perceptual_loss")) > 0
    assert module.val_metrics["val/perceptual_loss"] > 0
    assert not module.objective.perceptual.training  # stays in eval mode while the module trains


def trainer_metric(module: Any, key: str) -> float:
    return float(module.trainer.callback_metrics[key])


@pytest.mark.parametrize("kind", ["vq", "fc", "fc-cosine", "ema"])
def test_baseline_quantizers_train(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    pl.seed_everything(0, verbose=False)
    module = tiny_module(None, quantizer=kind, codebook_size=512, max_steps=2, disc_start=1)
    q = module.model.quantize
    before = q.embedding.detach().clone()
    trainer(tmp_path, limit_val_batches=0).fit(module, datamodule=data_module(files["photos"]))
    assert module.model.config.quantizer.kind == kind and module.model.codebook_size == 512
    assert not torch.equal(before, q.embedding)  # trained by gradient (vq, fc) or by EMA updates (ema)
    assert torch.isfinite(torch.tensor(trainer_metric(module, "train/loss")))


def test_truncated_jpeg_trains_and_reports_the_skipped_file(files: dict[str, Path], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(files["photos"], folder)
    write_truncated_jpeg(folder / "zz_truncated.jpg")
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], max_steps=4)
    dm = data_module(folder)
    with caplog.at_level(logging.WARNING, logger="vqgan_lc.train.data"):
        t = trainer(tmp_path, limit_val_batches=1)
        t.fit(module, datamodule=dm)
    assert module.gen_step == 4
    assert list(dm.skipped) == ["zz_truncated.jpg"] and dm.skip_events >= 1
    assert trainer_metric(module, "train/skipped_images") == 1.0
    assert sum("zz_truncated.jpg" in r.message for r in caplog.records) == 1


def test_batches_without_a_readable_image_are_skipped_then_refused(files: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty batches are skipped; an epoch (or EMPTY_BATCH_LIMIT batches in a row) without one readable
    image stops with a sentence instead of repeating forever under max_epochs -1 (audit U1)."""
    from vqgan_lc.errors import ImageSourceError
    from vqgan_lc.train import module as module_mod

    folder = tmp_path / "broken"
    for i in range(4):
        write_truncated_jpeg(folder / f"b{i}.jpg")
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], max_steps=4)
    dm = data_module(folder, samples_per_epoch=None)
    with pytest.raises(ImageSourceError, match=r"^no training image could be read in epoch 0 \(skipped 4, e\.g\. "):
        trainer(tmp_path, max_epochs=-1, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.gen_step == 0 and len(dm.skipped) == 4 and module._empty_in_row == 2  # 2 batches were skipped

    monkeypatch.setattr(module_mod, "EMPTY_BATCH_LIMIT", 2)
    module = tiny_module(files["codebook"], max_steps=4)
    dm = data_module(folder, samples_per_epoch=40)  # 20 batches per epoch: the limit stops it first
    with pytest.raises(ImageSourceError, match=r"^no training image could be read in 2 batches in a row "):
        trainer(tmp_path / "b", max_epochs=-1, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.gen_step == 0 and module._empty_in_row == 2


def test_schedule_from_epochs(files: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], warmup_steps=None, warmup_epochs=0.5, max_steps=None)
    rec = Record()
    trainer(tmp_path, max_epochs=2, callbacks=[rec], limit_val_batches=0).fit(
        module, datamodule=data_module(files["photos"]))  # 4 batches per epoch
    assert module.schedule_steps() == (2, 8) and module.gen_step == 8
    # the learning rate each batch used, set from gen_step: warm-up 0 (first step), 0.5, 1, then cosine
    lrs = [r["lr"] / 5e-4 for r in rec.rows]
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert module.optimizers()[1].param_groups[0]["lr"] == rec.rows[-1]["lr"]  # both players, one schedule


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixed_on_gpu_keeps_the_search_in_float32(files: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], disc_start=1, max_steps=3)
    t = trainer(tmp_path, accelerator="gpu", precision="bf16-mixed", limit_val_batches=1)
    t.fit(module, datamodule=data_module(files["photos"]))
    assert module.gen_step == 3 and 0 < module.val_metrics["val/utilization"] <= 1
    x = center_crops(files["photos"], 32).cuda()
    model = module.model.cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        z = model.encode_latents(x)
        out = model.quantize(z)
    assert z.dtype == torch.float32 and out.z_q.dtype == torch.float32  # quant_conv ran in fp32
    with torch.no_grad():
        assert torch.equal(out.ids, model.quantize(z.float()).ids)  # the search saw float32 latents


def test_the_lightning_package_trains_the_module(files: dict[str, Path], tmp_path: Path) -> None:
    """`lightning.pytorch.Trainer(...).fit(VQGANLCModule(...))`: the module is a lightning.pytorch module
    (with pytorch_lightning's it raised TypeError), and two generator steps run with the GAN from step 1
    (disc_start 0: the official `>` leaves the very first batch to the generator alone)."""
    import lightning

    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], disc_start=0, max_steps=2)
    assert isinstance(module, lightning.pytorch.LightningModule)
    t = lightning.pytorch.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False,
                                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                  limit_val_batches=0, default_root_dir=str(tmp_path))
    t.fit(module, datamodule=data_module(files["photos"]))
    assert module.gen_step == 2 and t.global_step == 3  # G, then G + D
    assert adam_steps(t.optimizers[0]) == 2 and adam_steps(t.optimizers[1]) == 1


def test_module_takes_typed_groups_and_builds_the_model_framework_free(files: dict[str, Path]) -> None:
    from vqgan_lc.build import ModelSpec, build_model
    from vqgan_lc.errors import ConfigError
    from vqgan_lc.train import LossConfig, OptimConfig, VQGANLCModule

    spec = ModelSpec(preset="tiny", codebook=str(files["codebook"]), codebook_std=0.5)
    module = VQGANLCModule(model=spec, loss=LossConfig(perceptual_weight=0.0, disc_start=7),
                           optim=OptimConfig(lr=1e-4, warmup_steps=3, max_steps=9))
    assert module.hparams["model"]["codebook_std"] == 0.5 and module.hparams["loss"]["disc_start"] == 7
    assert module.hparams["optim"]["betas"] == (0.5, 0.9)  # plain values: checkpoints load with weights_only
    assert torch.equal(build_model(spec).quantize.codebook, module.model.quantize.codebook)
    assert module.schedule_steps() == (3, 9) and module.lr_factor(3) == 1.0 and module.lr_factor(0) == 0.0
    assert module.lr_factor(6) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        build_model(ModelSpec(preset="nope"))
    with pytest.raises(ConfigError, match="min_lr"):
        OptimConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="disc_start"):
        LossConfig(disc_start=-1)
    with pytest.raises(ConfigError, match="codebook_size"):
        build_model(ModelSpec(preset="tiny", codebook=str(files["codebook"]), codebook_size=10))


def test_bf16_autocast_gives_the_search_an_unrounded_fp32_latent(files: dict[str, Path]) -> None:
    # Official VQGAN-LC trains in fp32; under the bf16 option quant_conv and the search stay fp32.
    torch.manual_seed(0)
    model = tiny_module(files["codebook"]).model.eval()
    x = center_crops(files["photos"], 32)[:2]
    seen: list[torch.Tensor] = []
    hook = model.quantize.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.encoder(x)
        out = model(x)
    hook.remove()
    assert h.dtype == torch.bfloat16  # the encoder itself does run in bf16
    z = seen[0]
    assert z.dtype == torch.float32
    with torch.no_grad():
        exact = model.quant_conv(h.float())  # fp32 conv of the bf16 features, not rounded afterwards
    assert torch.equal(z, exact) and not torch.equal(z, exact.bfloat16().float())
    assert torch.equal(out.quantizer.ids, model.quantize.search(exact))


def test_discriminator_reforward_sees_the_updated_generator(files: dict[str, Path], tmp_path: Path) -> None:
    seen: dict[str, list[torch.Tensor]] = {"reuse": [], "reforward": []}
    for mode in seen:
        pl.seed_everything(0, verbose=False)
        module = tiny_module(files["codebook"], disc_start=0, max_steps=2, disc_input=mode)
        fakes = seen[mode]
        orig = module.objective.discriminator_step_loss

        def spy(images: torch.Tensor, fake: torch.Tensor, orig: Any = orig, fakes: list = fakes) -> Any:
            fakes.append(fake.detach().clone())
            return orig(images, fake)

        module.objective.discriminator_step_loss = spy  # type: ignore[method-assign]
        trainer(tmp_path / mode, limit_val_batches=0).fit(module, datamodule=data_module(files["photos"]))
        assert module.gen_step == 2 and len(fakes) == 1  # D stepped once (batch 1)
    # Same seed and batches: the generator updates are identical, only what D is shown differs.
    assert not torch.equal(seen["reuse"][0], seen["reforward"][0])
    assert float((seen["reuse"][0] - seen["reforward"][0]).abs().max()) > 1e-6


def test_lpips_dropout_official_is_on_in_training_only() -> None:
    from vqgan_lc.losses import PerceptualLoss

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    for mode, noisy in (("off", False), ("official", True)):
        torch.manual_seed(0)
        p = PerceptualLoss(random_trunk=True, dropout=mode)
        host = torch.nn.Sequential(p).train()  # the parent's train() reaches the loss, as in the official model
        drops = [m for m in p.modules() if isinstance(m, torch.nn.Dropout)]
        assert len(drops) == 5 and all(m.training == noisy for m in drops)
        assert not any(m.training for m in p.modules() if not isinstance(m, (torch.nn.Dropout, PerceptualLoss)))
        a, b = p(x, y), p(x, y)
        assert torch.equal(a, b) != noisy
        host.eval()
        assert torch.equal(p(x, y), p(x, y))  # evaluation is deterministic either way


def test_training_with_the_official_resize_records_it_in_the_export(files: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = tiny_module(files["codebook"], max_steps=1)
    assert module.model.preprocessing["resize"] == "shorter-side"
    trainer(tmp_path, limit_val_batches=0).fit(module, datamodule=data_module(files["photos"], resize="official"))
    module.export(tmp_path / "m")
    pre = VQGANLC.from_pretrained(tmp_path / "m").preprocessing
    assert (pre["resize"], pre["interpolation"]) == ("official", "bilinear")
