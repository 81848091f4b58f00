"""The NAR (MaskGIT) stage 2 (issue 17 item 3): mask counts, masked-only loss, bidirectional attention,
the 8-step decoding schedule, training with `vqgan-lc train-gpt` and sampling with `vqgan-lc sample`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model, write_photo_folder
from PIL import Image

from vqgan_lc.cli.main import main
from vqgan_lc.generate import GPT, GPTConfig, sample_two_stage
from vqgan_lc.generate.maskgit import (
    MaskGITSampling,
    _gumbel,
    mask_count,
    mask_schedule,
    masked_cross_entropy,
    maskgit_generate,
    maskgit_logits,
    maskgit_loss,
    random_mask,
)
from vqgan_lc.tokens import EncodeOptions, encode_dataset
from vqgan_lc.train.gpt import GPTLightningModule, GPTTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _nar(seed: int = 0, **cfg) -> GPT:  # noqa: ANN003
    torch.manual_seed(seed)
    base = dict(n_codes=32, grid=(4, 4), prefix_vocab=8, prefix_grid=(2, 2), n_layer=2, n_head=2, n_embd=32,
                attention="bidirectional")
    return GPT(GPTConfig(**{**base, **cfg})).eval()


def test_mask_count_formula_bounds_and_distribution() -> None:
    L = 256
    u = torch.tensor([0.0, 1e-9, 0.5, 1 / 3, 0.999999])
    assert mask_count(u, L).tolist() == [L, L, math.floor(L * math.cos(math.pi / 4)) + 1, 222, 1]
    draws = mask_count(torch.rand(200_000, generator=torch.Generator().manual_seed(0)), L)
    assert int(draws.min()) >= 1 and int(draws.max()) <= L
    # P(n <= k) = P(cos(u pi/2) < k / L) = 1 - 2/pi acos(k / L); the mean is L * 2/pi + 1/2 (+- flooring)
    assert float(draws.double().mean()) == pytest.approx(L * 2 / math.pi + 0.5, abs=1.0)
    for k in (64, 128, 192):
        assert float((draws <= k).double().mean()) == pytest.approx(1 - 2 / math.pi * math.acos(k / L), abs=0.01)
    m = random_mask(500, 16, generator=torch.Generator().manual_seed(1))
    assert m.sum(1).min() >= 1 and m.sum(1).max() <= 16
    assert m.float().mean(0).std() < 0.05  # positions chosen uniformly


def test_loss_is_on_masked_positions_only_with_label_smoothing() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10)
    targets = torch.randint(0, 10, (2, 6))
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    loss = masked_cross_entropy(logits, targets, mask)
    changed = logits.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    assert float(masked_cross_entropy(changed, targets, mask)) == pytest.approx(float(loss), abs=1e-6)
    changed[0, 0, targets[0, 0]] += 5.0  # a masked position does change it
    assert float(masked_cross_entropy(changed, targets, mask)) != pytest.approx(float(loss), abs=1e-4)
    # label smoothing 0.1 (DiGIT): (1 - 0.1) * NLL + 0.1 * mean over the vocabulary of -log p
    lp = torch.log_softmax(logits[mask], -1)
    nll = -lp.gather(1, targets[mask][:, None])[:, 0]
    expected = (0.9 * nll - 0.1 * lp.mean(-1)).mean()
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    assert float(masked_cross_entropy(logits, targets, mask, label_smoothing=0.0)) == pytest.approx(float(nll.mean()), abs=1e-5)

    # the model's loss: inputs at masked positions are [MASK], so their ids do not matter
    g = _nar()
    ids = torch.randint(0, 32, (3, 16))
    prefix = torch.randint(0, 8, (3, 4))
    m = random_mask(3, 16, generator=torch.Generator().manual_seed(2))
    other = torch.where(m, torch.randint(0, 32, (3, 16)), ids)
    with torch.no_grad():
        a = maskgit_logits(g, ids, m, prefix=prefix)
        b = maskgit_logits(g, other, m, prefix=prefix)
        assert torch.allclose(a, b)
        assert float(maskgit_loss(g, ids, prefix=prefix, mask=m)) == pytest.approx(
            float(masked_cross_entropy(a, ids, m)), abs=1e-5)


def test_attention_is_bidirectional_and_the_causal_model_unchanged() -> None:
    g = _nar()
    ids = torch.randint(0, 32, (1, 16))
    prefix = torch.randint(0, 8, (1, 4))
    none = torch.zeros(1, 16, dtype=torch.bool)
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 1) % 32
    with torch.no_grad():
        a, b = maskgit_logits(g, ids, none, prefix=prefix), maskgit_logits(g, later, none, prefix=prefix)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # a later token changes the first position's output
    c = g.config
    assert (c.mask_id, c.input_vocab, c.n_positions, g.tok_emb.num_embeddings) == (33, 34, 17, 34)
    with pytest.raises(ValueError, match="maskgit_loss"):
        g.loss(ids, prefix=prefix)
    with pytest.raises(ValueError, match="maskgit_logits"):
        g(ids[:, :3], prefix=prefix)
    with pytest.raises(ValueError, match="eos_target"):
        GPTConfig(n_codes=8, attention="bidirectional", eos_target=True)
    # the default stays causal and an old config.json (no `attention`) loads as before
    old = GPTConfig.from_dict({k: v for k, v in GPTConfig(n_codes=32).to_dict().items() if k != "attention"})
    assert (old.attention, old.mask_id, old.input_vocab, old.n_positions) == ("causal", None, 33, 256)


def test_decoding_schedule_unmasks_all_in_eight_steps_and_is_deterministic_at_temperature_0() -> None:
    assert mask_schedule(256, 8) == [251, 236, 212, 181, 142, 97, 49, 0]
    assert mask_schedule(16, 8) == [15, 14, 13, 11, 8, 6, 3, 0]
    g = _nar()
    prefix = torch.randint(0, 8, (3, 4))
    hist: list[torch.Tensor] = []
    ids = maskgit_generate(g, 3, prefix=prefix, generator=torch.Generator().manual_seed(0), history=hist)
    assert ids.shape == (3, 4, 4) and int(ids.min()) >= 0 and int(ids.max()) < 32
    assert [h.sum(1).tolist() for h in hist] == [[n] * 3 for n in mask_schedule(16, 8)]
    for before, after in zip(hist, hist[1:]):  # decided positions are never masked again
        assert not bool((after & ~before).any())
    greedy = MaskGITSampling(temperature=0.0)
    x = maskgit_generate(g, 3, prefix=prefix, sampling=greedy, generator=torch.Generator().manual_seed(5))
    y = maskgit_generate(g, 3, prefix=prefix, sampling=greedy, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, y)
    assert len(mask_schedule(16, 4)) == 4 and mask_schedule(16, 1) == [0]
    # the re-masking noise is a standard Gumbel: mean = Euler's constant, variance pi^2 / 6
    noise = _gumbel(torch.Size([200_000]), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(noise).all())
    assert float(noise.mean()) == pytest.approx(0.5772, abs=0.01)
    assert float(noise.var()) == pytest.approx(math.pi**2 / 6, abs=0.03)


def test_training_module_needs_matching_objective_and_attention() -> None:
    with pytest.raises(ValueError, match="objective"):
        GPTTrainConfig(objective="nar")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pkeep"):
        GPTTrainConfig(objective="maskgit", pkeep=0.8)
    with pytest.raises(ValueError, match="bidirectional"):
        GPTLightningModule(GPTConfig(n_codes=8, grid=(2, 2), n_layer=1, n_head=1, n_embd=8), GPTTrainConfig(objective="maskgit"))
    with pytest.raises(ValueError, match="causal"):
        GPTLightningModule(_nar().config, GPTTrainConfig())


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """9 photos encoded by two tiny VQGAN-LC models: 'prefix' ids (stand-ins for DiGIT ids) and target ids."""
    root = tmp_path_factory.mktemp("nar")
    write_photo_folder(root / "photos", per_class=3)
    opts = EncodeOptions(image_size=64, batch_size=8, num_workers=0, shard_size=8)
    vq = tiny_model().save_pretrained(root / "vq")
    pre = tiny_model(seed=1).save_pretrained(root / "vq-prefix")
    encode_dataset(vq, root / "photos", root / "tok", options=opts, progress=False)
    encode_dataset(pre, root / "photos", root / "tok-prefix", options=opts, progress=False)
    return {"vq": vq, "tok": root / "tok", "prefix": root / "tok-prefix"}


def test_nar_stage2_trains_and_samples_through_the_cli(paired: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    s1, s2, out = tmp_path / "s1", tmp_path / "s2", tmp_path / "samples"
    assert main(["train-gpt", "--tokens", str(paired["prefix"]), "--config", "gpt_tiny_cpu", "--out", str(s1),
                 "--max-steps", "4", "--no-progress", "--set", "model.n_classes=0"]) == 0
    assert main(["train-gpt", "--tokens", str(paired["tok"]), "--prefix-tokens", str(paired["prefix"]),
                 "--config", "gpt_digit_stage2_nar_tiny", "--out", str(s2), "--max-steps", "60", "--no-progress"]) == 0
    nar = GPT.from_pretrained(s2)
    c = nar.config
    assert (c.attention, c.n_codes, c.grid, c.prefix_len, c.prefix_vocab) == ("bidirectional", 512, (8, 8), 64, 512)
    capsys.readouterr()
    assert main(["info", str(s2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention"] == "bidirectional"
    # the loss falls: the trained model against its own initialisation on the training rows, same masks
    from vqgan_lc.train.gpt import GPTTokenDataset

    data = GPTTokenDataset(paired["tok"], paired["prefix"])
    ids = torch.stack([data[i][0] for i in range(len(data))])
    prefix = torch.stack([data[i][2] for i in range(len(data))])
    masks = [random_mask(len(ids), 64, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    torch.manual_seed(0)
    init = GPT(c).eval()
    with torch.no_grad():
        before = np.mean([float(maskgit_loss(init, ids, prefix=prefix, mask=m)) for m in masks])
        after = np.mean([float(maskgit_loss(nar, ids, prefix=prefix, mask=m)) for m in masks])
    assert before > math.log(512) - 0.5 and after < before - 1.0, (before, after)

    assert main(["sample", "--gpt", str(s1), "--stage2", str(s2), "--tokenizer", str(paired["vq"]), "--n", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    assert Image.open(pngs[0]).size == (64, 64)
    got = np.load(out / "ids.npy")
    assert got.shape == (3, 8, 8) and got.min() >= 0 and got.max() < 512
    assert np.load(out / "digit_ids.npy").shape == (3, 8, 8)
    # the API gives the same ids (same seeds), and a MaskGIT model cannot be a stage 1
    s1m = GPT.from_pretrained(s1)
    res = sample_two_stage(s1m, nar, tiny_model(), n=3, seed=0)
    assert np.array_equal(res.ids.numpy(), got)
    with pytest.raises(ValueError, match="stage 2"):
        sample_two_stage(nar, nar, tiny_model(), n=1)


def test_shipped_nar_configs_name_the_maskgit_objective_and_a_bidirectional_model() -> None:
    from vqgan_lc.cli.train_gpt import load_config
    from vqgan_lc.generate import gpt_config

    for name, steps in (("gpt_digit_stage2_nar_tiny", 200), ("gpt_digit_stage2_nar_base", 125_000)):
        cfg = load_config(name, [])
        tc = GPTTrainConfig.from_dict(cfg["train"])
        assert (tc.objective, tc.label_smoothing, tc.max_steps, tc.pkeep) == ("maskgit", 0.1, steps, 1.0)
    base = gpt_config("gpt-digit-stage2-nar-base")
    assert (base.attention, base.n_layer, base.n_embd, base.prefix_len, base.n_positions) == ("bidirectional", 16, 1024, 256, 257)
