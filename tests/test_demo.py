"""A CI-sized run of the demo (``make demo`` with 4 training steps): every stage runs through the real
``vqgan-lc`` commands, the report's numbers are present and finite, every file loads with the
package's readers, and a rerun with the same seed gives the same numbers."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("faiss")
pytest.importorskip("lightning")

from vqgan_lc import VQGANLC
from vqgan_lc.codebook import load_codebook
from vqgan_lc.demo import run_demo
from vqgan_lc.tokens import TokenDataset, open_tokens

STEPS, K = 4, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[tuple[Path, dict]]:  # noqa: ANN001
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast and immune to a busy machine
    out = tmp_path_factory.mktemp("demo")
    yield out, run_demo(out, steps=STEPS, k=K, seed=0)
    # The demo runs Lightning in this process: leave the global torch state as the other tests expect it.
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_report_numbers_are_present_and_finite(demo) -> None:  # noqa: ANN001
    out, metrics = demo
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for key in ("psnr_rgb_db", "psnr_y_db", "ssim", "utilization", "perplexity", "val_l1_first", "val_l1_last"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 5.0 < metrics["psnr_rgb_db"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
    assert metrics["codebook_size"] == K and 1 <= metrics["codes_used"] <= K
    assert metrics["utilization"] == pytest.approx(metrics["codes_used"] / K, abs=1e-4)
    assert 1.0 <= metrics["perplexity"] <= K
    assert metrics["val_tokens"] == metrics["val_images"] * 64  # 64 px / f8 -> 8 x 8 tokens
    # Utilization over training tokens: every training tile encoded, at least 32 tokens per code.
    n_train = sum(1 for _ in (out / "data" / "train").rglob("*.png"))
    assert n_train == 310 and metrics["train_tokens"] == n_train * 64 == len(open_tokens(out / "tokens_train")) * 64
    assert metrics["train_tokens_per_code"] == pytest.approx(n_train * 64 / K, abs=0.01)
    assert n_train * 64 / inspect.signature(run_demo).parameters["k"].default >= 32  # at `make demo`'s k
    assert 1 <= metrics["train_codes_used"] <= K
    assert metrics["train_utilization"] == pytest.approx(metrics["train_codes_used"] / K, abs=1e-4)
    # No pretrained weights offline: these are reported as not computed, the rest still ran.
    assert {"lpips_alex", "lpips_vgg", "rfid"} <= set(metrics["not_computed"])

    raw = json.loads((out / "eval" / "report.json").read_text())["metrics"]
    assert metrics["psnr_rgb_db"] == pytest.approx(raw["psnr_rgb"]["value"], abs=1e-3)
    report = (out / "report.md").read_text()
    assert f"{raw['psnr_rgb']['value']:.2f} dB" in report and f"{raw['ssim']['value']:.4f}" in report
    assert f"{metrics['codes_used']:,} of {K:,} codes" in report
    assert f"{metrics['train_codes_used']:,} of {K:,} codes, {metrics['train_tokens']:,} tokens" in report
    for command in ("vqgan-lc build-codebook", "vqgan-lc train --config", "vqgan-lc encode", "vqgan-lc decode",
                    "vqgan-lc evaluate"):
        assert command in report, command
    assert "not computed" in report and "| nan" not in report.lower()


def test_pictures_are_written_and_load(demo) -> None:  # noqa: ANN001
    from PIL import Image

    out, metrics = demo
    for name in ("reconstructions.png", "code_usage.png", "loss_curve.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50, name
    decoded = sorted((out / "decoded").glob("*.png"))
    assert len(decoded) == 16
    with Image.open(decoded[0]) as im:
        assert im.size == (64, 64)


def test_files_are_the_real_formats(demo) -> None:  # noqa: ANN001
    from vqgan_lc.build import ModelSpec
    from vqgan_lc.train import LossConfig, VQGANLCModule

    out, metrics = demo
    cb = load_codebook(out / "codebook.safetensors")
    assert tuple(cb.vectors.shape) == (K, 192)  # 8x8x3 pixel patches, one per token

    model = VQGANLC.from_pretrained(out / "model")
    assert not model.inference_only and model.codebook_size == K
    tokens = open_tokens(out / "tokens")
    assert len(tokens) == metrics["val_images"] and tokens.grid == (8, 8)
    ids, label = TokenDataset(out / "tokens")[0]
    assert ids.shape == (8, 8) and 0 <= int(ids.min()) and int(ids.max()) < K and label >= 0

    # The decoded PNGs are model.decode of the stored ids.
    from PIL import Image

    with torch.no_grad():
        rec = model.decode(torch.from_numpy(tokens[:1].astype(np.int64))).clamp(-1, 1)
    expected = rec[0].add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    first = sorted((out / "decoded").glob("*.png"))[0]
    assert np.abs(np.asarray(Image.open(first).convert("RGB")).astype(int) - expected.astype(int)).max() <= 1

    # `vqgan-lc train --init-from <demo>/model` starts from exactly these weights.
    module = VQGANLCModule(model=ModelSpec(init_from=str(out / "model")), loss=LossConfig(perceptual_weight=0.0))
    a, b = module.model.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["data"]["mode"] == "tokens" and report["data"]["images"] == metrics["val_images"]


def test_same_seed_same_numbers(demo, tmp_path) -> None:  # noqa: ANN001
    _, metrics = demo
    again = run_demo(tmp_path / "again", steps=STEPS, k=K, seed=0)
    assert again == metrics


def test_step_progress_reports_step_total_and_time_left() -> None:
    from types import SimpleNamespace

    from lightning.pytorch import LightningModule

    from vqgan_lc.build import ModelSpec
    from vqgan_lc.train import LossConfig, OptimConfig, StepProgress, VQGANLCModule

    module = VQGANLCModule(model=ModelSpec(preset="tiny", quantizer="vq", codebook_size=16),
                           loss=LossConfig(perceptual_weight=0.0), optim=OptimConfig(warmup_steps=2, max_steps=10))
    trainer = SimpleNamespace(is_global_zero=True)
    cb = StepProgress(every_n_steps=5, label="train")
    cb.on_train_start(trainer, module)
    for step in range(1, 11):
        module.gen_step = step
        cb.on_train_batch_end(trainer, module, {"rec_loss": torch.tensor(0.25)}, None, step)
    assert len(cb.lines) == 2  # steps 5 and 10 only
    assert cb.lines[0].startswith("train: step 5/10") and "left" in cb.lines[0] and "rec loss 0.2500" in cb.lines[0]
    assert "step 10/10" in cb.lines[1] and "about 0 s left" in cb.lines[1]
    with pytest.raises(ValueError):
        StepProgress(every_n_steps=0)
    with pytest.raises(TypeError, match="VQGANLCModule"):  # typed against the module, no duck typing
        cb.on_train_start(trainer, LightningModule())
