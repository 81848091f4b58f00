"""DiGIT's training as published (issue 17 item 4): fairseq's inverse-sqrt schedule, weight decay on every
parameter, images re-tokenized online after random crop + flip (and augmented token variants), and the
shipped DiGIT configs against the official values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_digit_tokenizer, tiny_model, write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.errors import ConfigError, TokenFormatError
from vqgan_lc.generate import GPT, GPTConfig
from vqgan_lc.tokens.format import TokenFile
from vqgan_lc.train.gpt import (
    GPTLightningModule,
    GPTTokenDataset,
    GPTTrainConfig,
    OnlineTokenizers,
    fit_gpt,
    lr_at,
)
from vqgan_lc.train.schedule import inverse_sqrt_lr

CONFIGS = Path(__file__).resolve().parents[1] / "vqgan_lc" / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------ schedule and weight decay
def test_inverse_sqrt_is_fairseqs_schedule() -> None:
    tc = GPTTrainConfig(schedule="inverse-sqrt", lr=3e-4, warmup_steps=6250, warmup_init_lr=1e-7, max_steps=125_000)
    assert lr_at(0, tc) == pytest.approx(1e-7, rel=1e-12)
    assert lr_at(3125, tc) == pytest.approx((1e-7 + 3e-4) / 2, rel=1e-12)  # linear warm-up
    assert lr_at(6250, tc) == pytest.approx(3e-4, rel=1e-12)
    assert lr_at(25_000, tc) == pytest.approx(1.5e-4, rel=1e-12)  # 4x the steps: half the rate
    assert lr_at(125_000, tc) == pytest.approx(3e-4 * math.sqrt(6250 / 125_000), rel=1e-12)
    assert lr_at(10**9, tc) > 0  # never reaches 0, unlike the cosine
    # max_steps, min_lr and decay_start do not shape it
    assert lr_at(50_000, tc.__class__(**{**tc.__dict__, "max_steps": 60_000, "min_lr": 1e-5})) == lr_at(50_000, tc)
    assert inverse_sqrt_lr(0, lr=1e-3, warmup_steps=0) == 1e-3 and inverse_sqrt_lr(100, lr=1e-3, warmup_steps=0) == 1e-4
    with pytest.raises(ValueError, match="schedule"):
        GPTTrainConfig(schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_decay_params"):
        GPTTrainConfig(weight_decay_params="norms")  # type: ignore[arg-type]


def test_weight_decay_on_every_parameter_or_on_linear_weights_only() -> None:
    mc = GPTConfig(n_codes=32, grid=(4, 4), n_classes=3, prefix_vocab=8, prefix_grid=(2, 2), n_layer=2, n_head=2,
                   n_embd=16)
    names = dict(GPTLightningModule(mc, GPTTrainConfig()).gpt.named_parameters())

    def groups(which: str) -> list[tuple[float, set[str]]]:
        m = GPTLightningModule(mc, GPTTrainConfig(weight_decay=0.01, weight_decay_params=which))  # type: ignore[arg-type]
        ids = {id(p): n for n, p in m.gpt.named_parameters()}
        return [(g["weight_decay"], {ids[id(p)] for p in g["params"]}) for g in m.configure_optimizers().param_groups]

    (wd, decayed), (wd0, kept) = groups("weights")
    assert (wd, wd0) == (0.01, 0.0) and decayed | kept == set(names) and not decayed & kept
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    for n in ("tok_emb.weight", "pos_emb", "prefix_emb.weight", "prefix_pos_emb", "blocks.0.ln_1.weight",
              "blocks.0.attn.qkv.bias", "ln_f.bias"):
        assert n in kept
    [(wd_all, every)] = groups("all")
    assert wd_all == 0.01 and every == set(names)


def test_decay_on_all_shrinks_an_embedding_row_without_gradient() -> None:
    """Decoupled decay: a row that gets no gradient still shrinks by lr * wd per step with "all", not with
    "weights"."""
    mc = GPTConfig(n_codes=16, grid=(2, 2), n_layer=1, n_head=2, n_embd=8)
    out = {}
    for which in ("weights", "all"):
        torch.manual_seed(0)
        m = GPTLightningModule(mc, GPTTrainConfig(lr=0.1, weight_decay=0.5, weight_decay_params=which))  # type: ignore[arg-type]
        opt = m.configure_optimizers()
        row = m.gpt.tok_emb.weight[15].detach().clone()  # id 15 never appears in the batch
        ids = torch.zeros(2, 4, dtype=torch.long)
        m.gpt.loss(ids).backward()
        opt.step()
        out[which] = (row, m.gpt.tok_emb.weight[15].detach())
    torch.testing.assert_close(out["weights"][1], out["weights"][0])
    torch.testing.assert_close(out["all"][1], out["all"][0] * (1 - 0.1 * 0.5))


def test_digit_configs_carry_the_official_recipe() -> None:
    """config/stage1/dino_base.yaml, config/stage2/dino_base.yaml, config/stage2/dino_base_nar.yaml."""
    official = {"gpt_digit_stage1_base": (3e-4, 125_000), "gpt_digit_stage2_base": (5e-4, 250_000),
                "gpt_digit_stage2_nar_base": (5e-4, 125_000)}
    for name, (lr, steps) in official.items():
        t = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["train"]
        tc = GPTTrainConfig.from_dict(t)
        assert (tc.schedule, tc.warmup_steps, tc.warmup_init_lr, tc.lr, tc.max_steps) == ("inverse-sqrt", 6250, 1e-7, lr, steps)
        assert (tc.weight_decay, tc.weight_decay_params, tc.betas, tc.grad_clip, tc.label_smoothing) == (
            0.01, "all", (0.9, 0.98), 1.0, 0.1)
        assert tc.image_size == 256 and tc.image_flip  # randcrop: Resize 256 + RandomCrop 256 + flip


# ------------------------------------------------------------------ augmented token variants
def _variant_file(directory: Path, n: int, n_aug: int, offset: int) -> TokenFile:
    """Rows (n_aug, 2, 2) where variant v of row i holds i * 10 + v + offset everywhere."""
    arr = np.zeros((n, n_aug, 2, 2), dtype=np.uint32)
    for i in range(n):
        for v in range(n_aug):
            arr[i, v] = i * 10 + v + offset
    manifest = {"grid": [2, 2], "tokenizer": {"codebook_size": 1000}, "classes": []}
    return TokenFile(directory=directory, manifest=manifest, shards=[arr], labels=np.full(n, -1, dtype=np.int64),
                     paths=[f"img{i}.png" for i in range(n)])


def test_augmented_variants_are_drawn_at_random_and_paired_with_the_prefix(tmp_path: Path) -> None:
    ds = GPTTokenDataset(_variant_file(tmp_path / "a", 3, 10, 0), _variant_file(tmp_path / "b", 3, 10, 500))
    torch.manual_seed(0)
    seen: dict[int, set[int]] = {i: set() for i in range(3)}
    for _ in range(60):
        for i in range(3):
            ids, label, prefix = ds[i]
            assert ids.shape == (4,) and prefix.shape == (4,) and int(label) == -1
            v = int(ids[0]) - i * 10
            assert torch.all(ids == i * 10 + v) and torch.all(prefix == i * 10 + v + 500)  # the same variant
            seen[i].add(v)
    assert all(len(s) == 10 for s in seen.values())  # every variant comes up
    # both directories must hold the same number of variants (the same --augment)
    with pytest.raises(TokenFormatError, match="augmented variants"):
        GPTTokenDataset(_variant_file(tmp_path / "a", 3, 10, 0), _variant_file(tmp_path / "b", 3, 2, 0))[0]


# ------------------------------------------------------------------ images tokenized online
@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("online")
    write_photo_folder(root / "photos", per_class=2)
    return {"photos": root / "photos", "vq": tiny_model().save_pretrained(root / "vq"),
            "digit": tiny_digit_tokenizer(k=24).save_pretrained(root / "digit")}


def test_online_tokenizers_encode_each_augmented_crop(online: dict[str, Path]) -> None:
    from vqgan_lc.data import list_images
    from vqgan_lc.tokenizer import load_tokenizer
    from vqgan_lc.train.data import ImageFolderDataset

    vq, dig = load_tokenizer(online["vq"]), load_tokenizer(online["digit"])
    tok = OnlineTokenizers(vq, dig)
    assert tok.shape(64) == (512, (8, 8), 24, (16, 16))
    ds = ImageFolderDataset(list_images(online["photos"]), 64, train=True, flip=True, seed=0)
    views = torch.stack([ds[(0, epoch, 0)]["image"] for epoch in range(4)])  # image 0 in four epochs
    # the photos are square, so the 64 px crop is the whole image: only the flip changes with the epoch
    assert all(torch.equal(v, views[0]) or torch.equal(v, views[0].flip(-1)) for v in views)
    assert len({v.numpy().tobytes() for v in views}) == 2
    ids, prefix = tok(views)
    with torch.no_grad():
        torch.testing.assert_close(ids, vq.encode(views).reshape(4, -1))
        torch.testing.assert_close(prefix, dig.encode(views).reshape(4, -1))
    assert ids.dtype == prefix.dtype == torch.long and ids.shape == (4, 64) and prefix.shape == (4, 256)
    assert len({tuple(r.tolist()) for r in ids}) > 1  # re-tokenized: other crops give other ids


def test_fit_gpt_from_images_with_a_prefix_tokenizer(online: dict[str, Path], tmp_path: Path) -> None:
    train = dict(batch_size=3, max_steps=3, warmup_steps=1, num_workers=0, accelerator="cpu", image_size=64,
                 log_every_n_steps=1, schedule="inverse-sqrt", weight_decay_params="all", checkpoint_every_minutes=None)
    out = fit_gpt(None, tmp_path / "gpt", model={"preset": "gpt-tiny", "n_classes": 0}, train=train,
                  images=online["photos"], tokenizer=online["vq"], prefix_tokenizer=online["digit"], progress=False)
    gpt = GPT.from_pretrained(out)
    c = gpt.config
    assert (c.n_codes, c.grid, c.prefix_vocab, c.prefix_grid) == (512, (8, 8), 24, (16, 16))
    prov = gpt.provenance
    assert prov["steps"] == 3 and math.isfinite(prov["final_loss"]) and prov["tokens"]["online"]
    assert prov["tokens"]["num_rows"] == 6 and prov["tokens"]["augmentation"] == "resize 64 + random crop 64 + flip"
    from vqgan_lc.tokenizer import load_tokenizer

    assert prov["tokens"]["tokenizer"]["config_hash"] == load_tokenizer(online["vq"]).config_hash()
    assert prov["prefix_tokens"]["tokenizer"]["kind"] == "digit"
    assert not any(k.startswith(("target.", "prefix.", "tokenizers")) for k in gpt.state_dict())
    with pytest.raises(ConfigError, match="not both"):
        fit_gpt(tmp_path / "tok", tmp_path / "x", images=online["photos"], tokenizer=online["vq"])
    with pytest.raises(ConfigError, match="--tokenizer"):
        fit_gpt(None, tmp_path / "x", images=online["photos"])


def test_train_gpt_cli_nar_stage2_from_images(online: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "nar"
    rc = main(["train-gpt", "--images", str(online["photos"]), "--tokenizer", str(online["vq"]),
               "--prefix-tokenizer", str(online["digit"]), "--config", "gpt_digit_stage2_nar_tiny", "--out", str(out),
               "--max-steps", "2", "--batch-size", "2", "--no-progress", "--train.image_size", "64"])
    assert rc == 0
    gpt = GPT.from_pretrained(out)
    assert gpt.config.bidirectional and gpt.config.prefix_grid == (16, 16) and gpt.provenance["steps"] == 2
    # resumed (the image data module restores its position), then stage 1 from the same images, then sampled
    assert main(["train-gpt", "--images", str(online["photos"]), "--tokenizer", str(online["vq"]),
                 "--prefix-tokenizer", str(online["digit"]), "--config", "gpt_digit_stage2_nar_tiny", "--out", str(out),
                 "--max-steps", "4", "--batch-size", "2", "--no-progress", "--train.image_size", "64", "--resume"]) == 0
    assert GPT.from_pretrained(out).provenance["steps"] == 4
    stage1 = tmp_path / "stage1"
    assert main(["train-gpt", "--images", str(online["photos"]), "--tokenizer", str(online["digit"]), "--config",
                 "gpt_tiny_cpu", "--out", str(stage1), "--max-steps", "2", "--batch-size", "2", "--no-progress",
                 "--train.image_size", "64", "--model.n_classes", "0"]) == 0
    s1 = GPT.from_pretrained(stage1)
    assert (s1.config.n_codes, s1.config.grid) == (24, (16, 16)) and s1.provenance["tokens"]["tokenizer"]["kind"] == "digit"
    samples = tmp_path / "samples"
    assert main(["sample", "--gpt", str(stage1), "--stage2", str(out), "--tokenizer", str(online["vq"]), "--n", "2",
                 "--out", str(samples), "--device", "cpu"]) == 0
    assert np.load(samples / "ids.npy").shape == (2, 8, 8) and len(list(samples.glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        main(["train-gpt", "--images", str(online["photos"]), "--config", "gpt_tiny_cpu", "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit):
        main(["train-gpt", "--config", "gpt_tiny_cpu", "--out", str(tmp_path / "y")])


# ------------------------------------------------------------------ the defaults table
def test_docs_defaults_table_names_real_options_and_values() -> None:
    """docs/digit.md: every option it tells users to pass exists, and the config values it quotes are the
    shipped ones."""
    import argparse
    import re

    from vqgan_lc.cli import build_codebook, convert, train_gpt

    doc = (Path(__file__).resolve().parents[1] / "docs" / "digit.md").read_text()
    known: set[str] = set(train_gpt.build_parser()._option_string_actions)
    for mod in (build_codebook, convert):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        known |= set(p._option_string_actions)
    for opt in ("--recipe", "--image-fraction", "--images", "--tokenizer", "--prefix-tokenizer", "--stage", "--dtype"):
        assert opt in doc and opt in known, opt
    stage1 = yaml.safe_load((CONFIGS / "gpt_digit_stage1_base.yaml").read_text())
    quoted = re.findall(r"config: `(\w+): ([^`]+)`(?:, `(\w+): ([^`]+)`)?", doc)  # what the DiGIT configs set
    pairs = [(k, v) for row in quoted for k, v in (row[:2], row[2:]) if k]
    assert {"schedule", "weight_decay_params", "warmup_init_lr"} <= {k for k, _ in pairs}
    for key, value in pairs:
        assert stage1["train"][key] == yaml.safe_load(value), key
    defaults = GPTTrainConfig()
    assert (defaults.schedule, defaults.weight_decay_params, defaults.lr, defaults.max_steps) == ("cosine", "weights", 4.5e-4, 450_000)
    assert "4.5e-4 / 450k / 5,000" in doc and "betas (0.9, 0.95)" in doc and defaults.betas == (0.9, 0.95)
