"""DiGIT's linear probe (jointly trained SGD heads per layer) beside the L-BFGS probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, write_photo_folder

from vqgan_lc.cli.main import main
from vqgan_lc.generate.gpt import GPT, GPTConfig
from vqgan_lc.generate.probe import all_pooled_states, paper_linear_probe, paper_states, train_joint_heads
from vqgan_lc.tokens import EncodeOptions, encode_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _planted(n: int = 60, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Class 0 rows use ids [0, 16), class 1 rows ids [16, 32): linearly separable pooled states."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n) % 2
    ids = torch.randint(0, 16, (2 * n, 16), generator=g) + 16 * y[:, None]
    return torch.utils.data.TensorDataset(ids, y)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_paper_probe_reaches_full_accuracy_on_planted_features(norm: str) -> None:
    torch.manual_seed(0)
    # unit-scale states (sqrt(d) embedding scale) as in DiGIT's fairseq decoder: the paper's SGD recipe
    # (lr 0.4) assumes them; the package's default N(0, 0.02) pre-LN stream is ~50x smaller
    gpt = GPT(GPTConfig(n_codes=32, grid=(4, 4), n_layer=3, n_head=4, n_embd=32, norm_position=norm,
                        embed_scale=True, eos_target=norm == "post")).eval()
    res = paper_linear_probe(gpt, _planted(), test_fraction=0.25, seed=0, steps=200, batch_size=32)
    assert res.states == [-1, 0, 1] == paper_states(gpt)  # embedding + blocks 0..L-2, never the last block
    assert res.n_train == 90 and res.n_test == 30 and res.n_classes == 2
    assert min(res.accuracies) >= 0.95 and res.best[1] == 1.0
    ds = _planted()
    shuffled = torch.utils.data.TensorDataset(ds.tensors[0], ds.tensors[1][torch.randperm(120, generator=torch.Generator().manual_seed(1))])
    bad = paper_linear_probe(gpt, shuffled, test_fraction=0.25, seed=0, steps=200, batch_size=32)
    assert max(bad.accuracies) < 0.8  # no planted signal: near chance


def test_pooled_states_are_embedding_and_block_outputs() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_codes=32, grid=(4, 4), n_layer=2, n_head=4, n_embd=16)).eval()
    ds = _planted(4)
    x, y = all_pooled_states(gpt, ds, [-1, 0, 1])
    ids = ds.tensors[0]
    with torch.no_grad():
        emb = gpt.embed(ids[:, :-1])
        assert torch.allclose(x[:, 0], emb.mean(1), atol=1e-6)
        assert torch.allclose(x[:, 1], gpt.hidden_states(ids[:, :-1], layer=0).mean(1), atol=1e-5)
        assert torch.allclose(x[:, 2], gpt.hidden_states(ids[:, :-1], layer=1).mean(1), atol=1e-5)
    assert not x.requires_grad and torch.equal(y, ds.tensors[1])
    with pytest.raises(ValueError, match="probed states"):
        all_pooled_states(gpt, ds, [2])


def test_heads_are_trained_jointly_one_optimizer_one_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.optim.SGD] = []
    backward_calls = {"n": 0}
    real_sgd, real_backward = torch.optim.SGD, torch.Tensor.backward

    class CountingSGD(real_sgd):  # type: ignore[misc,valid-type]
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)
            made.append(self)

    def counting_backward(self: torch.Tensor, *a: object, **k: object) -> None:
        backward_calls["n"] += 1
        real_backward(self, *a, **k)

    monkeypatch.setattr(torch.optim, "SGD", CountingSGD)
    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    x = torch.randn(40, 3, 8)
    y = torch.randint(0, 4, (40,))
    heads = train_joint_heads(x, y, 4, steps=7, batch_size=16)
    assert len(made) == 1 and backward_calls["n"] == 7
    (opt,) = made
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(heads) == 3 and {id(p) for p in params} == {id(p) for p in heads.parameters()}
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"], g["initial_lr"]) == (0.9, 0.0, 0.4)
    assert g["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to 0 at the end



def test_cli_paper_probe_of_a_prefix_gpt_with_test_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stage-2 (prefix) GPT probed with --test-tokens: the test rows get their prefix too (issue 17 P7)."""
    write_photo_folder(tmp_path / "photos", per_class=3)
    vq = tiny_model().save_pretrained(tmp_path / "vq")
    opts = EncodeOptions(image_size=64, batch_size=8, num_workers=0, shard_size=8)
    encode_dataset(vq, tmp_path / "photos", tmp_path / "tok", options=opts, progress=False)
    torch.manual_seed(0)
    GPT(GPTConfig(n_codes=512, grid=(8, 8), prefix_vocab=512, prefix_grid=(8, 8), n_layer=2, n_head=2,
                  n_embd=16)).save_pretrained(tmp_path / "gpt")
    tok = str(tmp_path / "tok")
    base = ["linear-probe", "--gpt", str(tmp_path / "gpt"), "--tokens", tok, "--prefix-tokens", tok, "--test-tokens", tok]
    assert main(base) != 0  # refused with a sentence, not a crash deep in the GPT
    assert "--test-prefix-tokens" in capsys.readouterr().err
    assert main([*base, "--test-prefix-tokens", tok, "--method", "paper", "--steps", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["states"] == [-1, 0] and out["n_train"] == out["n_test"] == 9 and len(out["accuracies"]) == 2
    assert main([*base, "--test-prefix-tokens", tok, "--layer", "0"]) == 0  # the L-BFGS probe, also fixed
