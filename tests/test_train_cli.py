"""``vqgan-lc train``: the three shipped recipes parse to the paper's values (by name); train, resume,
``vqgan-lc export``, fine-tune; TensorBoard only when asked."""

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

CONFIGS = Path(__file__).resolve().parents[1] / "vqgan_lc" / "configs"


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str, command: str = "train") -> int:
    # Only these subcommands: `main` imports every registered subcommand module to build its parser.
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {k: cli_main.SUBCOMMANDS[k] for k in ("train", "export")})
    return cli_main.main([command, *map(str, args)])


def printed_config(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, name: str) -> dict:
    with pytest.raises(SystemExit) as e:
        run_cli(monkeypatch, "--config", name, "--data.data", ".", "--print_config")
    assert e.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_paper_recipes_parse_to_the_official_values(capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f16 = printed_config(capsys, monkeypatch, "vqgan_lc_f16_100k")
    spec, loss, opt = f16["model"]["model"], f16["model"]["loss"], f16["model"]["optim"]
    d, t = f16["data"], f16["trainer"]
    assert spec["preset"] == "vqgan-lc-f16-100k" and loss["rec_loss"] == "l1"
    assert (opt["lr"], opt["min_lr"], opt["warmup_epochs"], loss["disc_start"]) == (5e-4, 0.0, 5, 50_000)
    assert (loss["rec_weight"], loss["perceptual_weight"], loss["quantizer_weight"], loss["gan_weight"]) == (
        1.0, 1.0, 0.1, 0.1)
    assert (loss["adaptive_weight_max"], loss["disc_layers"], loss["disc_ndf"], tuple(opt["betas"]), opt["eps"]) == (
        1e4, 2, 64, (0.5, 0.9), 1e-7)
    assert (d["image_size"], d["batch_size"], d["flip"]) == (256, 8, False)
    assert t["devices"] * t["num_nodes"] * d["batch_size"] == 256  # 32 GPUs x 8 (author, issue #3)
    assert (t["precision"], t["max_epochs"]) == ("32-true", 20)  # the official code is fp32
    assert (loss["disc_input"], loss["lpips_dropout"]) == ("reuse", "off")
    strategy = t["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    assert strategy["init_args"]["find_unused_parameters"] is True
    assert strategy["init_args"]["broadcast_buffers"] is False  # the frozen codebook is not re-sent every step
    assert f16["checkpoint"]["save_last"] is True and "optimizer" not in f16
    f8 = printed_config(capsys, monkeypatch, str(CONFIGS / "vqgan_lc_f8_100k.yaml"))  # a path works too
    assert f8["model"]["model"]["preset"] == "vqgan-lc-f8-100k" and f8["trainer"]["precision"] == "32-true"
    assert {k: v for k, v in f8["model"]["model"].items() if k != "preset"} == {
        k: v for k, v in spec.items() if k != "preset"}
    assert (f8["model"]["loss"], f8["model"]["optim"]) == (loss, opt)
    tiny = printed_config(capsys, monkeypatch, "tiny_cpu")
    assert tiny["model"]["model"]["preset"] == "tiny" and tiny["trainer"]["accelerator"] == "cpu"
    assert tiny["model"]["loss"]["perceptual_weight"] == 0.0 and tiny["data"]["image_size"] == 64
    assert tiny["model"]["loss"]["gan_weight"] == 0.1 and tiny["model"]["loss"]["quantizer_weight"] == 0.1
    assert tiny["model"]["optim"]["max_steps"] == 300 and tiny["model"]["model"]["codebook_std"] == 0.03


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("gpt_")))
def test_every_shipped_train_config_builds_its_module(name: str, tmp_path: Path) -> None:
    """Each shipped recipe instantiates (the module's typed groups and the data module's arguments)."""
    from vqgan_lc.cli.train import build_cli, translate

    cb = write_codebook(tmp_path / "codebook.safetensors")
    cli = build_cli(translate(["--config", name, "--data.data", str(tmp_path), "--codebook", str(cb),
                               "--model.model.preset", "tiny", "--model.loss.perceptual_weight", "0",
                               "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                               "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
                               "--trainer.default_root_dir", str(tmp_path / "run")]), run=False)
    module = cli.model
    assert module.model.codebook_size == 1024 and module.spec.codebook == str(cb)
    recipe = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    for group, config in (("loss", module.loss_config), ("optim", module.optim_config)):
        for key, value in recipe[group].items():
            if key != "perceptual_weight":
                assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), (group, key)


def test_unknown_config_name_is_one_sentence(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(monkeypatch, "--config", "no_such_recipe", "--data.data", ".") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vqgan-lc train: error: config 'no_such_recipe' is neither a file nor a shipped config")
    assert "tiny_cpu" in err and "vqgan_lc_f16_100k" in err


def test_train_resume_export_and_fine_tune_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    photos = write_photos(tmp_path / "photos")[0].parent
    cb = write_codebook(tmp_path / "codebook.safetensors")
    root = tmp_path / "run"
    common = ["--config", "tiny_cpu", "--data.data", photos, "--data.image_size", "32",
              "--data.batch_size", "2", "--data.samples_per_epoch", "4", "--data.num_workers", "0",
              "--model.loss.disc_start", "1", "--model.optim.warmup_steps", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
              "--trainer.default_root_dir", root]
    assert run_cli(monkeypatch, *common, "--codebook", cb, "--model.optim.max_steps", "3") == 0
    last = root / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["vqgan_lc"]["gen_step"] == 3
    assert not (root / "tensorboard").exists()  # CSV only unless --tensorboard true
    rows = list(csv.DictReader(open(root / "csv" / "version_0" / "metrics.csv")))
    util = [float(r["val/utilization"]) for r in rows if r.get("val/utilization")]
    assert len(util) == 2 and all(0 < u <= 1 for u in util)  # after epoch 0 and at the end (step 3)
    assert sorted(p.name for p in (root / "reconstructions").iterdir()) == ["step-0000002.png", "step-0000003.png"]
    assert VQGANLC.from_pretrained(root / "model-inference").inference_only

    # resume: same counter, continues to the new max_steps
    assert run_cli(monkeypatch, *common, "--codebook", cb, "--model.optim.max_steps", "5", "--ckpt-path", "last",
                   "--tensorboard", "true") == 0
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["vqgan_lc"]["gen_step"] == 5 and ckpt["global_step"] == 2 + 2 * 3  # D steps from gen step 2 (> disc_start 1)
    assert list((root / "tensorboard").glob("version_0/events.out.tfevents.*"))

    # `vqgan-lc export` a checkpoint, then fine-tune the exported model directory
    capsys.readouterr()
    assert run_cli(monkeypatch, last, "--out", tmp_path / "exported", command="export") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "exported")
    assert VQGANLC.from_pretrained(tmp_path / "exported").provenance["training"]["generator_steps"] == 5
    ft = tmp_path / "ft"
    args = [a if a != root else ft for a in common]
    assert run_cli(monkeypatch, *args, "--init-from", tmp_path / "exported", "--model.optim.max_steps", "1") == 0
    assert VQGANLC.from_pretrained(ft / "model").provenance["fine_tuned_from"] == str(tmp_path / "exported")

    # a missing VGG file is one sentence on stderr and exit code 1, before any training
    capsys.readouterr()
    assert run_cli(monkeypatch, *common, "--codebook", cb, "--model.loss.perceptual_weight", "1.0") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vqgan-lc train: error: the perceptual loss needs local VGG16 ImageNet weights")
    assert "--model.loss.lpips_weights" in err and "--model.loss.perceptual_weight 0" in err


def test_built_wheel_ships_every_config(tmp_path: Path) -> None:
    """A wheel built from a copy of the sources holds vqgan_lc/configs/*.yaml, so `--config NAME` works after
    `pip install vqgan-lc` (about 8 s: the C kernel is compiled)."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "vqgan_lc", src / "vqgan_lc", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=env, capture_output=True, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("vqgan_lc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"vqgan_lc/configs/{p.name}" for p in CONFIGS.glob("*.yaml")}
    assert len(shipped) >= 9 and shipped <= names  # every yaml beside vqgan_lc/configs/__init__.py
    assert "vqgan_lc/configs/__init__.py" in names and "vqgan_lc/cli/export.py" in names
