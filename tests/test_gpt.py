"""The GPT prior: KV cache == recomputation, filters, sampling, conditioning, files, overfitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqgan_lc import CheckpointError, FormatVersionError, TokenRangeError
from vqgan_lc.generate import (
    GPT,
    GPTConfig,
    SamplingConfig,
    apply_cfg,
    filter_logits,
    generate,
    gpt_config,
    resolve_top_k,
    sample_next,
    top_k_filter,
    top_p_filter,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(seed: int = 0, **kw) -> GPT:  # noqa: ANN003
    torch.manual_seed(seed)
    cfg = dict(n_codes=32, grid=(4, 4), n_classes=5, n_layer=2, n_head=4, n_embd=64)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


# ----------------------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("prefix", [False, True])
def test_kv_cache_logits_equal_full_recomputation_at_every_step(prefix: bool) -> None:
    kw = dict(prefix_vocab=7, prefix_grid=(2, 3)) if prefix else {}
    g = tiny(**kw)
    b, t = 3, g.config.seq_len
    ids = torch.randint(0, 32, (b, t), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, -1])
    pre = torch.randint(0, 7, (b, 6)) if prefix else None
    with torch.no_grad():
        full = g(ids[:, :-1], labels, pre)  # (B, T, V): logits[:, i] predicts id i
        assert full.shape == (b, t, 32)
        cache = g.new_cache(b)
        step_logits = [g.prefill(cache, b, labels, pre)]
        for i in range(t - 1):
            step_logits.append(g.decode_step(cache, ids[:, i]))
            # and the recomputation of the prefix alone (what mode="recompute" does)
            assert torch.allclose(g(ids[:, : i + 1], labels, pre, last_only=True), full[:, i + 1], atol=1e-5)
    for i, lg in enumerate(step_logits):
        assert torch.allclose(lg, full[:, i], atol=1e-5, rtol=0), f"step {i}"
    assert cache.length == g.config.prefix_len + t


def test_kv_cache_chunked_prefill_matches() -> None:
    g = tiny()
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        full = g(ids[:, :-1], torch.tensor([1, 2]))
        cache = g.new_cache(2)
        g.prefill(cache, 2, torch.tensor([1, 2]))
        g.decode_step(cache, ids[:, 0])
        chunk = g.decode_step(cache, ids[:, 1:6])  # 5 positions at once after cached ones (explicit mask)
    assert torch.allclose(chunk, full[:, 6], atol=1e-5)


def test_cache_and_recompute_sampling_draw_the_same_ids() -> None:
    g = tiny()
    s = SamplingConfig(top_k=None)
    a = generate(g, labels=torch.tensor([0, 1, 2, 3]), sampling=s, seed=3, mode="cache")
    b = generate(g, labels=torch.tensor([0, 1, 2, 3]), sampling=s, seed=3, mode="recompute")
    assert a.shape == (4, 4, 4) and a.dtype == torch.int64 and torch.equal(a, b)


# ----------------------------------------------------------------------------------------- filters
def test_top_k_keeps_exactly_the_k_highest_logits() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, 2.5], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    out = top_k_filter(logits, 3)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False, True], [True, True, True, False, False, False]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # kept logits unchanged
    assert resolve_top_k(0.1, 100_000) == 10_000  # VQGAN-LC: 10% of the vocabulary
    assert resolve_top_k(200, 8192) == 200 and resolve_top_k(None, 10) is None and resolve_top_k(0, 10) is None
    assert resolve_top_k(50, 20) is None  # k >= vocab: no filter


def test_sampled_ids_stay_within_the_top_k() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 100).expand(4000, 100)
    allowed = set(torch.topk(logits[0], 7).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    ids = sample_next(logits, SamplingConfig(top_k=7), gen)
    assert set(ids.tolist()) == allowed  # never outside, and every one of the 7 is reachable
    # the draw follows the filtered softmax: frequencies within 4 standard errors
    p = _probs(logits[:1], SamplingConfig(top_k=7))[0]
    freq = torch.bincount(ids, minlength=100).float() / len(ids)
    assert torch.all((freq - p).abs() <= 4 * (p * (1 - p) / len(ids)).sqrt() + 1e-6)
    frac = sample_next(torch.randn(50, 1000), SamplingConfig(top_k=0.1), gen)  # 10% = 100 ids
    assert frac.shape == (50,)


def _probs(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    return filter_logits(logits, s).softmax(-1)


@pytest.mark.parametrize(("p", "support"), [(0.4, {0}), (0.7, {0, 1}), (0.8, {0, 1, 2}), (0.95, {0, 1, 2, 3}),
                                            (1.0, {0, 1, 2, 3, 4})])
def test_top_p_support_is_the_smallest_set_reaching_p(p: float, support: set[int]) -> None:
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    perm = torch.tensor([3, 0, 4, 1, 2])  # shuffled so that the filter has to sort
    logits = probs.log()[perm][None]
    kept = torch.isfinite(top_p_filter(logits, p))[0]
    assert {int(perm[i]) for i in torch.nonzero(kept).flatten()} == support
    # and the sampler draws exactly that support (with and without a top-k before it)
    for k in (None, 4):
        draws = sample_next(logits.expand(3000, 5), SamplingConfig(top_k=k, top_p=p), torch.Generator().manual_seed(0))
        assert {int(perm[i]) for i in draws} == (support if k is None else support & {0, 1, 2, 3})


def test_temperature_zero_is_greedy_and_cfg_formula() -> None:
    g = tiny()
    greedy = generate(g, labels=torch.tensor([2, 2]), sampling=SamplingConfig(temperature=0), seed=0)
    again = generate(g, labels=torch.tensor([2, 2]), sampling=SamplingConfig(temperature=0), seed=5)
    assert torch.equal(greedy, again) and torch.equal(greedy[0], greedy[1])
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.allclose(apply_cfg(c, u, 1.0), c) and torch.allclose(apply_cfg(c, u, 3.0), torch.tensor([2.0, 0.0]))


def test_cfg_scale_one_equals_conditional_and_other_scales_differ() -> None:
    g = tiny()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    plain = generate(g, labels=y, sampling=SamplingConfig(top_k=None), seed=7)
    one = generate(g, labels=y, sampling=SamplingConfig(top_k=None, cfg_scale=1.0), seed=7)
    assert torch.equal(plain, one)
    guided = generate(g, labels=y, sampling=SamplingConfig(top_k=None, cfg_scale=4.0), seed=7)
    assert guided.shape == plain.shape and not torch.equal(plain, guided)
    # the guided logits are uncond + s (cond - uncond), checked against two forward passes
    with torch.no_grad():
        cond = g(torch.zeros(6, 0, dtype=torch.long), y)[:, 0]
        unc = g(torch.zeros(6, 0, dtype=torch.long), torch.full_like(y, -1))[:, 0]
    assert not torch.allclose(cond, unc)
    no_null = tiny(null_class=False)
    with pytest.raises(ValueError, match="null class"):
        generate(no_null, labels=y, sampling=SamplingConfig(cfg_scale=2.0))


def test_class_conditioning_changes_samples() -> None:
    g = tiny()
    a = generate(g, labels=torch.zeros(4, dtype=torch.long), sampling=SamplingConfig(top_k=None), seed=11)
    b = generate(g, labels=torch.full((4,), 3), sampling=SamplingConfig(top_k=None), seed=11)
    a2 = generate(g, labels=torch.zeros(4, dtype=torch.long), sampling=SamplingConfig(top_k=None), seed=11)
    assert torch.equal(a, a2) and (a != b).any()


# ----------------------------------------------------------------------------------------- checks and files
def test_layouts_presets_and_range_checks() -> None:
    c = gpt_config("gpt-vqgan-lc-404m")
    assert (c.n_layer, c.n_head, c.n_embd, c.seq_len) == (24, 16, 1024, 256)
    assert c.input_vocab == 101_000 and c.null_id is None  # official: n_codes + n_classes
    d = gpt_config("gpt-digit-stage1-base")
    assert (d.n_layer, d.n_embd, d.n_codes, d.n_classes, d.null_id) == (16, 1024, 8192, 0, 8192)
    assert gpt_config("gpt-digit-stage2-base").prefix_len == 256
    g = tiny()
    assert g.cond_ids(torch.tensor([0, 4, -1]), 3).tolist() == [32, 36, 37]  # class c -> n_codes + c, null last
    with pytest.raises(TokenRangeError):
        g(torch.tensor([[0, 32]]), torch.tensor([0]))
    with pytest.raises(TokenRangeError):
        g(torch.tensor([[0, 1]]), torch.tensor([5]))
    with pytest.raises(ValueError, match="prefix"):
        g(torch.tensor([[0, 1]]), torch.tensor([0]), torch.zeros(1, 4, dtype=torch.long))


def test_save_and_load_round_trip_and_version_check(tmp_path: Path) -> None:
    g = tiny(prefix_vocab=7, prefix_grid=(2, 3), tie_weights=True)
    g.save_pretrained(tmp_path / "gpt", provenance={"note": "x"})
    meta = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert meta["format"] == "vqgan-lc-gpt" and meta["format_version"] == 1 and meta["config"]["prefix_grid"] == [2, 3]
    h = GPT.from_pretrained(tmp_path / "gpt")
    assert h.config == g.config and h.provenance == {"note": "x"}
    ids, pre = torch.randint(0, 32, (2, 9)), torch.randint(0, 7, (2, 6))
    with torch.no_grad():
        assert torch.equal(g(ids, None, pre), h(ids, None, pre))
    meta["format_version"] = 2
    (tmp_path / "gpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FormatVersionError, match="Upgrade"):
        GPT.from_pretrained(tmp_path / "gpt")
    with pytest.raises(CheckpointError):
        GPT.from_pretrained(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------- training
def test_tiny_gpt_overfits_eight_sequences_then_reproduces_them() -> None:
    """2 layers x 64 wide, 8 classes each with one 16-token sequence: loss < 0.05 after 200 Lightning
    steps, then greedy and low-temperature samples of class c are sequence c."""
    import lightning.pytorch as pl

    from vqgan_lc.train.gpt import GPTLightningModule, GPTTrainConfig

    torch.manual_seed(0)
    seqs, labels = torch.randint(0, 32, (8, 16)), torch.arange(8)
    data = torch.utils.data.TensorDataset(seqs, labels, torch.empty(8, 0, dtype=torch.long))
    mc = GPTConfig(n_codes=32, grid=(4, 4), n_classes=8, n_layer=2, n_head=4, n_embd=64)
    tc = GPTTrainConfig(batch_size=8, lr=3e-3, warmup_steps=10, max_steps=200, min_lr=3e-4, num_workers=0)
    pl.seed_everything(0, verbose=False)
    module = GPTLightningModule(mc, tc)
    with torch.no_grad():
        start = module.gpt.loss(seqs, labels).item()
    trainer = pl.Trainer(max_steps=tc.max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8, shuffle=True))
    g = module.gpt.eval()
    with torch.no_grad():
        final = g.loss(seqs, labels).item()
    assert start > 3.0 and final < 0.05, (start, final)
    greedy = generate(g, labels=labels, sampling=SamplingConfig(temperature=0)).reshape(8, -1)
    assert torch.equal(greedy, seqs)
    cold = generate(g, labels=labels, sampling=SamplingConfig(temperature=0.5, top_k=None, top_p=0.9), seed=0)
    assert torch.equal(cold.reshape(8, -1), seqs)
    # each class gives its own sequence: conditioning changes the samples
    assert len({tuple(r.tolist()) for r in greedy}) == 8
