"""GPT training on token directories (`vqgan-lc train-gpt`), prefix pairing, the schedule, `vqgan-lc sample`
(VQGAN-LC + GPT) and the linear probe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model, write_photo_folder
from PIL import Image

from vqgan_lc.cli.main import main
from vqgan_lc.generate import GPT, GPTConfig, linear_probe, sample_images
from vqgan_lc.tokens import EncodeOptions, TokenFormatError, encode_dataset, open_tokens
from vqgan_lc.train.gpt import GPTTokenDataset, GPTTrainConfig, lr_at, model_config_from_data

CONFIGS = Path(__file__).resolve().parents[1] / "vqgan_lc" / "configs"
OPTS = EncodeOptions(image_size=64, batch_size=8, num_workers=0, shard_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """9 photos in 3 classes encoded by a tiny VQGAN-LC (512 codes, 8x8 tokens)."""
    root = tmp_path_factory.mktemp("gpt")
    write_photo_folder(root / "photos", per_class=3)
    vq = tiny_model().save_pretrained(root / "vq")
    encode_dataset(vq, root / "photos", root / "tok", options=OPTS, progress=False)
    return {"root": root, "photos": root / "photos", "vq": vq, "tok": root / "tok"}


def test_lr_schedule_warmup_hold_cosine() -> None:
    tc = GPTTrainConfig(lr=4.5e-4, warmup_steps=5000, decay_start=80_000, max_steps=450_000, min_lr=0.0)
    assert math.isclose(lr_at(0, tc), 4.5e-4 / 5000) and math.isclose(lr_at(4999, tc), 4.5e-4)
    assert lr_at(50_000, tc) == 4.5e-4 and lr_at(80_000, tc) == 4.5e-4
    assert math.isclose(lr_at(265_000, tc), 2.25e-4) and lr_at(450_000, tc) == 0.0
    tc2 = GPTTrainConfig(lr=1e-3, warmup_steps=0, max_steps=100, min_lr=1e-4)
    assert lr_at(0, tc2) == 1e-3 and math.isclose(lr_at(100, tc2), 1e-4)


def test_model_config_comes_from_the_token_directory(tokens: dict[str, Path]) -> None:
    tf = open_tokens(tokens["tok"])
    c = model_config_from_data({"preset": "gpt-tiny"}, tf)
    assert (c.n_codes, c.grid, c.n_classes, c.null_id, c.n_layer, c.n_embd) == (512, (8, 8), 3, 515, 2, 64)
    assert model_config_from_data({"preset": "gpt-tiny", "n_classes": 0}, tf).n_classes == 0
    with pytest.raises(ValueError, match="grid"):
        model_config_from_data({"grid": [4, 4]}, tf)
    with pytest.raises(ValueError, match="n_codes"):
        model_config_from_data({"n_codes": 100}, tf)
    with pytest.raises(ValueError, match="prefix"):
        model_config_from_data({"prefix_vocab": 8}, tf)


def test_pkeep_corrupts_a_fifth_of_the_inputs_from_the_whole_vocabulary() -> None:
    from vqgan_lc.train.gpt import GPTLightningModule

    mc = GPTConfig(n_codes=100, grid=(16, 16), n_classes=20, n_layer=1, n_head=2, n_embd=16)
    m = GPTLightningModule(mc, GPTTrainConfig(pkeep=0.8))
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (64, 256))
    out = m.corrupt(ids)
    changed = (out != ids).float().mean().item()
    assert 0.18 < changed < 0.21  # 20% replaced (a replacement equal to the original is rare: 1/120)
    assert int(out.max()) >= 100 and int(out.max()) < 120  # class ids can be drawn, as in the official code


def test_train_gpt_cli_exports_a_gpt_and_sample_cli_writes_pngs(tokens: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "gpt"
    rc = main(["train-gpt", "--tokens", str(tokens["tok"]), "--config", "gpt_tiny_cpu",  # a shipped config, by name
               "--out", str(out), "--max-steps", "6", "--no-progress", "--train.log_every_n_steps", "1"])
    assert rc == 0
    # the learning rate of each step comes from the step counter (no scheduler): warm-up over 10 steps
    import csv

    rows = list(csv.DictReader(open(out / "lightning" / "logs" / "version_0" / "metrics.csv")))
    tc = GPTTrainConfig(lr=1e-3, warmup_steps=10, max_steps=6, min_lr=1e-4)
    assert [float(r["lr"]) for r in rows if r.get("lr")] == pytest.approx([lr_at(s, tc) for s in range(6)])
    gpt = GPT.from_pretrained(out)
    assert (gpt.config.n_codes, gpt.config.grid, gpt.config.n_classes) == (512, (8, 8), 3)
    prov = gpt.provenance
    assert prov["steps"] == 6 and prov["final_loss"] > 0 and prov["tokens"]["num_rows"] == 9
    assert prov["tokens"]["classes"] == ["class_0_astronaut", "class_1_coffee", "class_2_chelsea"]
    assert (out / "lightning" / "checkpoints" / "last.ckpt").is_file()
    assert "GPT 2x64" in capsys.readouterr().out

    samples = tmp_path / "samples"
    rc = main(["sample", "--gpt", str(out), "--tokenizer", str(tokens["vq"]), "--class", "1", "class_2_chelsea",
               "--n", "2", "--out", str(samples), "--device", "cpu", "--top-k", "10%", "--cfg", "2.0"])
    assert rc == 0
    names = sorted(p.name for p in samples.glob("*.png"))
    assert names == ["class0001_00000.png", "class0001_00001.png", "class0002_00002.png", "class0002_00003.png"]
    assert Image.open(samples / names[0]).size == (64, 64)
    ids = np.load(samples / "ids.npy")
    assert ids.shape == (4, 8, 8) and ids.max() < 512 and np.load(samples / "labels.npy").tolist() == [1, 1, 2, 2]
    # a decoder that did not make the GPT's tokens is refused
    other = tiny_model(seed=1, embed_dim=4).save_pretrained(tmp_path / "other")
    assert main(["sample", "--gpt", str(out), "--tokenizer", str(other), "--n", "1", "--out", str(tmp_path / "x")]) == 1
    same_arch = tiny_model(seed=1).save_pretrained(tmp_path / "same_arch")  # same architecture, other weights
    assert main(["sample", "--gpt", str(out), "--tokenizer", str(same_arch), "--n", "1", "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()
    # an earlier run's samples are never mixed with new ones silently
    before = {p.name: p.read_bytes() for p in samples.iterdir()}
    assert main(["sample", "--gpt", str(out), "--tokenizer", str(tokens["vq"]), "--n", "1", "--out", str(samples),
                 "--device", "cpu"]) == 1
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == before
    # resume continues from last.ckpt to the new max_steps
    rc = main(["train-gpt", "--tokens", str(tokens["tok"]), "--config", str(CONFIGS / "gpt_tiny_cpu.yaml"),
               "--out", str(out), "--train.max_steps=8", "--no-progress", "--resume", "--set", "train.seed=0"])
    assert rc == 0 and GPT.from_pretrained(out).provenance["steps"] == 8


def test_train_gpt_takes_section_field_overrides_like_train() -> None:
    from vqgan_lc.cli.train_gpt import load_config, split_overrides

    sets, unknown = split_overrides(["--train.lr", "1e-4", "--model.n_layer=4", "--bogus", "--train"])
    assert sets == ["train.lr=1e-4", "model.n_layer=4"] and unknown == ["--bogus", "--train"]
    cfg = load_config("gpt_tiny_cpu", sets)
    assert cfg["train"]["lr"] == 1e-4 and cfg["model"]["n_layer"] == 4 and cfg["model"]["preset"] == "gpt-tiny"
    with pytest.raises(SystemExit):  # argparse's error: a flag that is neither an option nor an override
        main(["train-gpt", "--tokens", "t", "--config", "gpt_tiny_cpu", "--out", "o", "--bogus", "1"])


def test_prefix_tokens_must_list_the_same_images(tokens: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # a second tokenizer over the same folder pairs; over a folder with one image less it does not
    vq2 = tiny_model(seed=3).save_pretrained(tmp_path / "vq2")
    encode_dataset(vq2, tokens["photos"], tmp_path / "same", options=OPTS, progress=False)
    ds = GPTTokenDataset(tokens["tok"], tmp_path / "same")
    ids, label, prefix = ds[4]
    assert ids.shape == (64,) and prefix.shape == (64,) and int(label) == 1
    other = tmp_path / "photos2"
    write_photo_folder(other, per_class=3)
    next(iter(sorted(other.rglob("*.jpg")))).unlink()
    encode_dataset(vq2, other, tmp_path / "fewer", options=OPTS, progress=False)
    with pytest.raises(TokenFormatError, match="9 rows .* 8"):
        GPTTokenDataset(tokens["tok"], tmp_path / "fewer")
    rc = main(["train-gpt", "--tokens", str(tokens["tok"]), "--prefix-tokens", str(tmp_path / "fewer"),
               "--config", str(CONFIGS / "gpt_tiny_cpu.yaml"), "--out", str(tmp_path / "g")])
    assert rc == 1 and "same image folder" in capsys.readouterr().err


def test_sample_images_pipeline_api(tokens: dict[str, Path]) -> None:
    torch.manual_seed(0)
    vq = tiny_model()
    gpt = GPT(GPTConfig(n_codes=512, grid=(8, 8), n_classes=3, n_layer=2, n_head=4, n_embd=64)).eval()
    res = sample_images(gpt, vq, n=3, labels=[0, 1, 2], seed=0, batch_size=2)
    assert res.images.shape == (3, 3, 64, 64) and res.ids.shape == (3, 8, 8) and res.labels.tolist() == [0, 1, 2]
    assert torch.allclose(res.images[:1], vq.decode(res.ids[:1]).clamp(-1, 1), atol=1e-4)
    big = GPT(GPTConfig(n_codes=1000, grid=(8, 8), n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(Exception, match="512 codes"):
        sample_images(big, vq, n=1)


def test_linear_probe_separates_classes_and_not_random_labels() -> None:
    """Class 0 rows use ids [0, 16), class 1 rows ids [16, 32): the mean-pooled hidden states of even a
    random GPT separate them (accuracy 1.0); with shuffled labels the probe stays near chance."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_codes=32, grid=(4, 4), n_layer=2, n_head=4, n_embd=64)).eval()
    n = 60
    y = torch.arange(2 * n) % 2
    ids = torch.randint(0, 16, (2 * n, 16)) + 16 * y[:, None]
    ds = torch.utils.data.TensorDataset(ids, y)
    res = linear_probe(gpt, ds, layer=-1, test_fraction=0.25, seed=0)
    assert res.accuracy == 1.0 and res.n_test == 30 and res.n_train == 90 and res.layer == 1
    assert linear_probe(gpt, ds, layer=0).accuracy == 1.0
    shuffled = torch.utils.data.TensorDataset(ids, y[torch.randperm(2 * n, generator=torch.Generator().manual_seed(1))])
    assert linear_probe(gpt, shuffled, layer=-1, seed=0).accuracy < 0.75
    cond = GPT(GPTConfig(n_codes=32, grid=(4, 4), n_classes=2, null_class=False, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="null class"):
        linear_probe(cond, ds)


def test_train_gpt_resume_without_a_usable_checkpoint_is_one_sentence(tokens: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Audit S10: --resume with no checkpoint silently started from step 0; a damaged one gave a traceback."""
    out = tmp_path / "gpt"
    args = ["train-gpt", "--tokens", str(tokens["tok"]), "--config", str(CONFIGS / "gpt_tiny_cpu.yaml"),
            "--out", str(out), "--train.max_steps=2", "--no-progress", "--resume"]
    assert main(args) == 1
    err = capsys.readouterr().err
    last = out / "lightning" / "checkpoints" / "last.ckpt"
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"vqgan-lc train-gpt: error: --resume: no checkpoint at {last}; drop --resume to start a new run, "
        "or give the --out of the run to continue")
    assert not (out / "model.safetensors").exists()
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 cut")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"vqgan-lc train-gpt: error: --resume {last} is not a readable Lightning checkpoint (")
    assert not (out / "model.safetensors").exists()


def test_the_404m_recipe_equals_the_official_run() -> None:
    """Audit finding 1: 100 epochs (~125k steps at 1024), warmup 5k, hold to 80k, cosine towards 450k with
    floor 1e-5, no clipping, wd 0.01 on all parameters, minGPT init, the 101,000-way training softmax."""
    from vqgan_lc.cli.train_gpt import load_config

    cfg = load_config("gpt_vqgan_lc_404m", [])
    tc = GPTTrainConfig.from_dict(cfg["train"])
    assert (tc.lr, tc.warmup_steps, tc.decay_start, tc.max_steps, tc.max_epochs, tc.min_lr) == (
        4.5e-4, 5000, 80_000, 450_000, 100, 1e-5)
    assert (tc.grad_clip, tc.weight_decay, tc.weight_decay_on, tc.init, tc.pkeep) == (None, 0.01, "all", "mingpt", 0.8)
    assert (cfg["model"]["head"], cfg["model"]["null_class"]) == ("vocabulary", False)
    steps = 100 * (1_281_167 // 1024)  # 100 epochs of ImageNet-1k at batch 1024
    assert 125_000 <= steps <= 125_200
    assert lr_at(steps, tc) == pytest.approx(4.34e-4, abs=0.01e-4)  # never decays far
    assert lr_at(450_000, tc) == pytest.approx(1e-5) and lr_at(10**6, tc) == pytest.approx(1e-5)


def test_official_head_init_and_weight_decay_options() -> None:
    from vqgan_lc.train.gpt import GPTLightningModule

    mc = GPTConfig(n_codes=50, grid=(2, 2), n_classes=7, null_class=False, n_layer=2, n_head=2, n_embd=16,
                   head="vocabulary")
    torch.manual_seed(0)
    m = GPTLightningModule(mc, GPTTrainConfig(init="mingpt", weight_decay_on="all"))
    g = m.gpt
    assert g.head.weight.shape == (57, 16)  # n_codes + n_classes logits, as the official head
    ids, labels = torch.randint(0, 50, (3, 4)), torch.tensor([0, 3, 6])
    assert g(ids[:, :3], labels).shape == (3, 4, 50)  # sampling sees image logits only
    # the training softmax spans all 57 ids: it equals the cross-entropy over the full head by hand
    h = g.run_blocks(g.embed(ids[:, :-1], labels))
    full = g.head(g.ln_f(h))
    assert torch.allclose(g.loss(ids, labels), torch.nn.functional.cross_entropy(full.reshape(-1, 57), ids.reshape(-1)))
    assert not torch.allclose(g.loss(ids, labels), torch.nn.functional.cross_entropy(full[..., :50].reshape(-1, 50),
                                                                                     ids.reshape(-1)))
    # minGPT init: N(0, 0.02) everywhere (no scaled residual projections), zero positions
    assert float(g.pos_emb.detach().abs().max()) == 0.0
    proj = torch.cat([p.reshape(-1) for n, p in g.named_parameters() if n.endswith("proj.weight")])
    assert float(proj.std()) == pytest.approx(0.02, rel=0.1)
    opt = m.configure_optimizers()
    decayed = [gr for gr in opt.param_groups if gr["weight_decay"] == 0.01]
    assert {id(p) for gr in decayed for p in gr["params"]} == {id(p) for p in g.parameters()}
    default = GPTLightningModule(mc.replace(head="codes"), GPTTrainConfig())
    assert default.gpt.head.weight.shape == (50, 16) and float(default.gpt.pos_emb.std()) > 0.01
    no_decay = [gr for gr in default.configure_optimizers().param_groups if gr["weight_decay"] == 0.0]
    assert any(p is default.gpt.pos_emb for gr in no_decay for p in gr["params"])
    with pytest.raises(ValueError, match="head 'vocabulary'"):
        GPTConfig(n_codes=50, n_classes=7, head="vocabulary", tie_weights=True)
