"""``vqgan-lc train``: the three YAML recipes parse to the paper's values; train, resume, export, fine-tune."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import (
    single_thread,  # noqa: F401 - an autouse fixture: one intra-op thread
    write_codebook,
    write_photos,
)

from vqgan_lc import VQGANLC
from vqgan_lc.cli import main as cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    # Only the train subcommand: `main` imports every registered subcommand module to build its parser.
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {"train": cli_main.SUBCOMMANDS["train"]})
    return cli_main.main(["train", *map(str, args)])


def printed_config(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, name: str) -> dict:
    with pytest.raises(SystemExit) as e:
        run_cli(monkeypatch, "--config", CONFIGS / name, "--data.data", ".", "--print_config")
    assert e.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_paper_recipes_parse_to_the_official_values(capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f16 = printed_config(capsys, monkeypatch, "vqgan_lc_f16_100k.yaml")
    m, d, t = f16["model"], f16["data"], f16["trainer"]
    assert m["preset"] == "vqgan-lc-f16-100k" and m["rec_loss"] == "l1"
    assert (m["lr"], m["min_lr"], m["warmup_epochs"], m["disc_start"]) == (5e-4, 0.0, 5, 50_000)
    assert (m["rec_weight"], m["perceptual_weight"], m["quantizer_weight"], m["gan_weight"]) == (1.0, 1.0, 0.1, 0.1)
    assert (m["adaptive_weight_max"], m["disc_layers"], m["disc_ndf"], tuple(m["betas"]), m["eps"]) == (
        1e4, 2, 64, (0.5, 0.9), 1e-7)
    assert (d["image_size"], d["batch_size"], d["flip"]) == (256, 8, False)
    assert t["devices"] * t["num_nodes"] * d["batch_size"] == 256  # 32 GPUs x 8 (author, issue #3)
    assert (t["precision"], t["max_epochs"], t["strategy"]) == ("bf16-mixed", 20, "ddp_find_unused_parameters_true")
    assert f16["checkpoint"]["save_last"] is True and "optimizer" not in f16
    f8 = printed_config(capsys, monkeypatch, "vqgan_lc_f8_100k.yaml")
    assert f8["model"]["preset"] == "vqgan-lc-f8-100k" and f8["trainer"]["precision"] == "bf16-mixed"
    assert {k: v for k, v in f8["model"].items() if k != "preset"} == {
        k: v for k, v in f16["model"].items() if k != "preset"}
    tiny = printed_config(capsys, monkeypatch, "tiny_cpu.yaml")
    assert tiny["model"]["preset"] == "tiny" and tiny["trainer"]["accelerator"] == "cpu"
    assert tiny["model"]["perceptual_weight"] == 0.0 and tiny["data"]["image_size"] == 64
    assert tiny["model"]["gan_weight"] == 0.1 and tiny["model"]["quantizer_weight"] == 0.1


def test_train_resume_export_and_fine_tune_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    photos = write_photos(tmp_path / "photos")[0].parent
    cb = write_codebook(tmp_path / "codebook.safetensors")
    root = tmp_path / "run"
    common = ["--config", CONFIGS / "tiny_cpu.yaml", "--data.data", photos, "--data.image_size", "32",
              "--data.batch_size", "2", "--data.samples_per_epoch", "4", "--data.num_workers", "0",
              "--model.disc_start", "2", "--model.warmup_steps", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", root]
    assert run_cli(monkeypatch, *common, "--model.codebook", cb, "--model.max_steps", "3") == 0
    last = root / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["vqgan_lc"]["gen_step"] == 3
    assert list((root / "tensorboard").glob("version_0/events.out.tfevents.*"))
    rows = list(csv.DictReader(open(root / "csv" / "version_0" / "metrics.csv")))
    util = [float(r["val/utilization"]) for r in rows if r.get("val/utilization")]
    assert len(util) == 2 and all(0 < u <= 1 for u in util)  # after epoch 0 and at the end (step 3)
    assert sorted(p.name for p in (root / "reconstructions").iterdir()) == ["step-0000002.png", "step-0000003.png"]
    assert VQGANLC.from_pretrained(root / "model-inference").inference_only

    # resume: same counter, continues to the new max_steps
    assert run_cli(monkeypatch, *common, "--model.codebook", cb, "--model.max_steps", "5", "--ckpt-path", "last") == 0
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["vqgan_lc"]["gen_step"] == 5 and ckpt["global_step"] == 2 + 2 * 3  # D steps from gen step 2

    # export a checkpoint, then fine-tune the exported model directory
    assert run_cli(monkeypatch, "--export-checkpoint", last, "--out", tmp_path / "exported") == 0
    assert VQGANLC.from_pretrained(tmp_path / "exported").provenance["training"]["generator_steps"] == 5
    ft = tmp_path / "ft"
    args = [a if a != root else ft for a in common]
    assert run_cli(monkeypatch, *args, "--init-from", tmp_path / "exported", "--model.max_steps", "1") == 0
    assert VQGANLC.from_pretrained(ft / "model").provenance["fine_tuned_from"] == str(tmp_path / "exported")

    # a missing VGG file is one sentence on stderr and exit code 1, before any training
    capsys.readouterr()
    assert run_cli(monkeypatch, *common, "--model.codebook", cb, "--model.perceptual_weight", "1.0") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vqgan-lc train: error: the perceptual loss needs local VGG16 ImageNet weights")
    assert "--model.lpips_weights" in err and "--model.perceptual_weight 0" in err
