"""`vqgan-lc convert --format digit`: crafted fairseq-format DiGIT checkpoints against an independent
re-derivation of fairseq's TransformerDecoder forward (written here with plain torch ops)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqgan_lc.codebook import load_codebook
from vqgan_lc.convert_digit import convert_digit, load_fairseq_checkpoint, save_digit_conversion
from vqgan_lc.errors import CheckpointError, CodebookError
from vqgan_lc.generate.gpt import GPT, GPTConfig

D, H, FFN, LAYERS = 32, 4, 64, 2
GRID = (4, 4)
T = GRID[0] * GRID[1]  # image tokens per sequence
K_DIGIT = 24  # DiGIT ids
K_VQ = 20  # stage-2 pixel ids
NSPECIAL, EOS, PAD = 5, 2, 1


# ------------------------------------------------------------------ crafted fairseq checkpoints
def _crafted_state(*, vocab_rows: int, out_rows: int, pre_ln: bool, prefix_table: bool, seed: int,
                   n_tokens: int = T) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).half()  # released files are fp16

    s: dict[str, torch.Tensor] = {
        "decoder.embed_tokens.weight": r(vocab_rows, D, std=D ** -0.5),
        "decoder.embed_positions.weight": r(n_tokens + 1 + PAD + 1 + 3, D),  # fairseq: max_positions + padding_idx + 1
        "decoder.output_projection.weight": r(out_rows, D),
        "decoder.version": torch.tensor([3.0]),
    }
    if prefix_table:
        s["decoder.embed_positions_1.weight"] = r(n_tokens + PAD + 1 + 3, D)
    if pre_ln:
        s["decoder.layer_norm.weight"] = 1 + r(D, std=0.1)
        s["decoder.layer_norm.bias"] = r(D, std=0.1)
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        for n in ("q", "k", "v", "out"):
            s[p + f"self_attn.{n}_proj.weight"] = r(D, D)
            s[p + f"self_attn.{n}_proj.bias"] = r(D, std=0.05)
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            s[p + f"{n}.weight"] = 1 + r(D, std=0.1)
            s[p + f"{n}.bias"] = r(D, std=0.1)
        s[p + "fc1.weight"], s[p + "fc1.bias"] = r(FFN, D), r(FFN, std=0.05)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = r(D, FFN), r(D, std=0.05)
    return s


def _save_fairseq(path: Path, state: dict[str, torch.Tensor], **extra: object) -> Path:
    """Saved as fairseq's trainer does: cfg as a plain container, args None, optimizer history."""
    obj = {"args": None, "cfg": {"model": {"_name": "stlm", "decoder_attention_heads": H, "decoder_embed_dim": D}},
           "model": state, "optimizer_history": [{"criterion_name": "x", "optimizer_name": "FairseqAdam",
                                                  "lr_scheduler_state": {"best": None}, "num_updates": 10}],
           "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}}, "last_optimizer_state": None, **extra}
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------ independent reference forward
def _ln(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, (D,), s[name + ".weight"].double(), s[name + ".bias"].double(), eps=1e-5)


def _lin(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ s[name + ".weight"].double().t() + s[name + ".bias"].double()


def _fairseq_positions(n: int, table: torch.Tensor) -> torch.Tensor:
    # make_positions: cumsum over non-pad tokens + padding_idx -> 2, 3, ...
    return table.double()[torch.arange(n) + PAD + 1]


def reference_logits(s: dict[str, torch.Tensor], tokens: torch.Tensor, *, pre_ln: bool, n_prefix: int = 0,
                     causal: bool = True) -> torch.Tensor:
    """fairseq TransformerDecoder (no encoder attention) in float64: (B, L) fairseq ids -> (B, L, V) logits.
    ``causal=False``: ``full_context_alignment=True`` (DiGIT's NAR stage 2), no future mask."""
    b, length = tokens.shape
    x = math.sqrt(D) * s["decoder.embed_tokens.weight"].double()[tokens]
    if n_prefix:  # DiGIT stage 2: the prefix has its own table; the rest restarts at position 2
        pos = torch.cat([_fairseq_positions(n_prefix, s["decoder.embed_positions_1.weight"]),
                         _fairseq_positions(length - n_prefix, s["decoder.embed_positions.weight"])])
    else:
        pos = _fairseq_positions(length, s["decoder.embed_positions.weight"])
    x = x + pos
    mask = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    if not causal:
        mask = torch.zeros_like(mask)
    hd = D // H
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        res = x
        h = _ln(x, s, p + "self_attn_layer_norm") if pre_ln else x
        q = _lin(h, s, p + "self_attn.q_proj") * hd ** -0.5
        k, v = _lin(h, s, p + "self_attn.k_proj"), _lin(h, s, p + "self_attn.v_proj")
        q, k, v = (t.view(b, length, H, hd).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v
        x = res + _lin(att.transpose(1, 2).reshape(b, length, D), s, p + "self_attn.out_proj")
        if not pre_ln:
            x = _ln(x, s, p + "self_attn_layer_norm")
        res = x
        h = _ln(x, s, p + "final_layer_norm") if pre_ln else x
        x = res + _lin(F.gelu(_lin(h, s, p + "fc1")), s, p + "fc2")
        if not pre_ln:
            x = _ln(x, s, p + "final_layer_norm")
    if pre_ln:
        x = _ln(x, s, "decoder.layer_norm")
    return x @ s["decoder.output_projection.weight"].double().t()


def _image_columns(logits: torch.Tensor, n_dict: int) -> torch.Tensor:
    """Reference logits in the package's column order: image ids, then EOS."""
    return torch.cat([logits[..., NSPECIAL:n_dict], logits[..., EOS : EOS + 1]], dim=-1)


def _greedy_reference(s: dict[str, torch.Tensor], start: torch.Tensor, *, n_dict: int, pre_ln: bool,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
    seq = start[:, None]
    if prefix is not None:
        seq = torch.cat([prefix, seq], dim=1)
    out = []
    for _ in range(T):
        lg = reference_logits(s, seq, pre_ln=pre_ln, n_prefix=0 if prefix is None else prefix.shape[1])[:, -1]
        nxt = lg[:, NSPECIAL:n_dict].argmax(-1) + NSPECIAL  # sampling never picks specials
        out.append(nxt - NSPECIAL)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out, 1)


def _greedy_gpt(gpt: GPT, labels: torch.Tensor | None, prefix: torch.Tensor | None, b: int) -> torch.Tensor:
    cache = gpt.new_cache(b)
    logits = gpt.prefill(cache, b, labels, prefix)
    out = []
    for i in range(T):
        nxt = logits.argmax(-1)
        out.append(nxt)
        if i < T - 1:
            logits = gpt.decode_step(cache, nxt)
    return torch.stack(out, 1)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("class_cond", [False, True])
def test_stage1_logits_and_greedy_ids_equal_fairseq(tmp_path: Path, class_cond: bool) -> None:
    n_dict = NSPECIAL + K_DIGIT
    rows = n_dict + (1000 if class_cond else 0)
    s = _crafted_state(vocab_rows=rows, out_rows=n_dict, pre_ln=False, prefix_table=False, seed=1 + class_cond)
    ckpt = _save_fairseq(tmp_path / "checkpoint_last.pt", s)
    conv = convert_digit(ckpt, grid=GRID)
    gpt, c = conv.gpt, conv.gpt.config
    assert conv.stage == "stage1" and c.norm_position == "post" and c.embed_scale and c.eos_target
    assert (c.n_codes, c.n_classes, c.n_layer, c.n_head, c.n_embd) == (K_DIGIT, 1000 if class_cond else 0, LAYERS, H, D)
    assert all(v.dtype == torch.float32 for v in gpt.state_dict().values())

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K_DIGIT, (3, T), generator=g)
    labels = torch.tensor([7, 999, 0]) if class_cond else None
    first = labels + n_dict if class_cond else torch.full((3,), EOS)
    tokens = torch.cat([first[:, None], ids + NSPECIAL], dim=1)  # fairseq src: [EOS-as-BOS | class; ids]
    ref = _image_columns(reference_logits(s, tokens, pre_ln=False), n_dict)
    with torch.no_grad():
        got = gpt(ids, labels, with_eos=True)  # 257-th target included
        assert got.shape == (3, T + 1, K_DIGIT + 1)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
        # the stage-1 loss has T + 1 targets: ids then EOS (fairseq's add_eos_shift)
        tgt = torch.cat([ids, torch.full((3, 1), K_DIGIT)], 1)
        want = F.cross_entropy(ref.reshape(-1, K_DIGIT + 1), tgt.reshape(-1))
        assert abs(float(gpt.loss(ids, labels)) - float(want)) < 1e-5
        greedy = _greedy_gpt(gpt, labels, None, 3)
    assert torch.equal(greedy, _greedy_reference(s, first, n_dict=n_dict, pre_ln=False))


def test_stage2_logits_and_greedy_ids_equal_fairseq(tmp_path: Path) -> None:
    n_tgt, n_src = NSPECIAL + K_VQ, NSPECIAL + K_DIGIT
    s = _crafted_state(vocab_rows=n_tgt + n_src, out_rows=n_tgt, pre_ln=True, prefix_table=True, seed=5)
    conv = convert_digit(_save_fairseq(tmp_path / "stage2.pt", s), grid=GRID, prefix_grid=GRID)
    gpt, c = conv.gpt, conv.gpt.config
    assert conv.stage == "stage2" and c.norm_position == "pre" and (c.n_codes, c.prefix_vocab) == (K_VQ, K_DIGIT)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, K_DIGIT, (2, T), generator=g)
    ids = torch.randint(0, K_VQ, (2, T), generator=g)
    fs_prefix = prefix + n_tgt + NSPECIAL  # DiGIT ids sit after the VQ dictionary in the shared table
    tokens = torch.cat([fs_prefix, torch.full((2, 1), EOS), ids + NSPECIAL], dim=1)
    ref = _image_columns(reference_logits(s, tokens, pre_ln=True, n_prefix=T), n_tgt)[:, T:]
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids, None, prefix, with_eos=True).double(), ref, atol=1e-5, rtol=1e-5)
        greedy = _greedy_gpt(gpt, None, prefix, 2)
    assert torch.equal(greedy, _greedy_reference(s, torch.full((2,), EOS), n_dict=n_tgt, pre_ln=True, prefix=fs_prefix))


def _nar_checkpoint(tmp_path: Path, *, name: str = "st2vtlm_nar", seed: int = 6) -> tuple[Path, dict[str, torch.Tensor]]:
    n_tgt, n_src = NSPECIAL + K_VQ, NSPECIAL + K_DIGIT
    s = _crafted_state(vocab_rows=n_tgt + n_src, out_rows=n_tgt, pre_ln=True, prefix_table=True, seed=seed)
    obj_cfg = {"model": {"_name": name, "decoder_attention_heads": H}}
    torch.save({"args": None, "cfg": obj_cfg, "model": s}, tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.pt", s


def test_stage2_nar_logits_equal_fairseq_full_context(tmp_path: Path) -> None:
    """model_nar.py: input [prefix + |tgt dict| + 5; EOS; VQ + 5 with <unk> (3) at masked positions], no
    future mask, logits[:, P + 1 + i] predict VQ id i; specials are never sampled."""
    from vqgan_lc.generate.maskgit import MaskGITSampling, maskgit_generate, maskgit_logits

    n_tgt = NSPECIAL + K_VQ
    ckpt, s = _nar_checkpoint(tmp_path)
    conv = convert_digit(ckpt, grid=GRID, prefix_grid=GRID)
    gpt, c = conv.gpt, conv.gpt.config
    assert conv.stage == "stage2-nar" and c.bidirectional and not c.eos_target and c.norm_position == "pre"
    assert (c.n_codes, c.prefix_vocab, c.mask_id, c.null_id) == (K_VQ, K_DIGIT, K_VQ + 1, K_VQ)
    assert gpt.head.weight.shape == (K_VQ, D)
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, K_DIGIT, (3, T), generator=g)
    ids = torch.randint(0, K_VQ, (3, T), generator=g)
    mask = torch.rand(3, T, generator=g) < 0.5
    mask[0] = True  # the first decoding step: everything masked
    mask[1] = False
    fs_vq = (ids + NSPECIAL).masked_fill(mask, 3)  # <unk>
    tokens = torch.cat([prefix + n_tgt + NSPECIAL, torch.full((3, 1), EOS), fs_vq], dim=1)
    ref = reference_logits(s, tokens, pre_ln=True, n_prefix=T, causal=False)[:, T + 1 :, NSPECIAL:n_tgt]
    with torch.no_grad():
        got = maskgit_logits(gpt, ids, mask, None, prefix)
    assert got.shape == (3, T, K_VQ)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    # a future position matters (bidirectional): changing the last id changes the first logit
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % K_VQ
    with torch.no_grad():
        moved = maskgit_logits(gpt, other, torch.zeros_like(mask), None, prefix)[:, 0]
        base = maskgit_logits(gpt, ids, torch.zeros_like(mask), None, prefix)[:, 0]
    assert float((moved - base).abs().max()) > 1e-4
    # one-step greedy decoding = argmax of the official all-<unk> logits over the image ids
    with torch.no_grad():
        dec = maskgit_generate(gpt, 3, prefix=prefix, sampling=MaskGITSampling(steps=1, temperature=0))
    all_unk = torch.cat([prefix + n_tgt + NSPECIAL, torch.full((3, 1), EOS), torch.full((3, T), 3)], dim=1)
    want = reference_logits(s, all_unk, pre_ln=True, n_prefix=T, causal=False)[:, T + 1 :, NSPECIAL:n_tgt].argmax(-1)
    assert torch.equal(dec.reshape(3, T), want)


def test_stage2_nar_stage_selection(tmp_path: Path) -> None:
    ckpt, _ = _nar_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="NAR.*stage2-nar"):
        convert_digit(ckpt, stage="stage2", grid=GRID, prefix_grid=GRID)
    # same keys and shapes as AR: a file whose cfg does not name the NAR model converts as AR unless told
    plain, _ = _nar_checkpoint(tmp_path, name="st2vtlm")
    assert convert_digit(plain, grid=GRID, prefix_grid=GRID).stage == "stage2"
    forced = convert_digit(plain, stage="stage2-nar", grid=GRID, prefix_grid=GRID)
    assert forced.stage == "stage2-nar" and forced.gpt.config.bidirectional
    out = tmp_path / "out"
    save_digit_conversion(forced, out)
    again = GPT.from_pretrained(out / "gpt")
    assert again.config == forced.gpt.config and again.provenance["stage"] == "stage2-nar"
    stage1 = _save_fairseq(tmp_path / "s1.pt", _crafted_state(vocab_rows=NSPECIAL + K_DIGIT, out_rows=NSPECIAL + K_DIGIT,
                                                             pre_ln=False, prefix_table=False, seed=0))
    with pytest.raises(CheckpointError, match="stage-1 checkpoint, not stage2-nar"):
        convert_digit(stage1, stage="stage2-nar", grid=GRID)


def test_cli_writes_gpt_and_codebook_and_reloads(tmp_path: Path) -> None:
    n_dict = NSPECIAL + K_DIGIT
    s = _crafted_state(vocab_rows=n_dict, out_rows=n_dict, pre_ln=False, prefix_table=False, seed=3,
                       n_tokens=256)  # the released 16 x 16 grid (the CLI's)
    centroids = torch.randn(K_DIGIT, 8)
    s["centroids"] = centroids.t().contiguous().half()  # official: (d, K), np.load(...).T
    s["centroid_norm"] = (centroids ** 2).sum(1, keepdim=True).t().half()
    ckpt = _save_fairseq(tmp_path / "ck.pt", s)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vqgan_lc.cli.main", "convert", "--format", "digit", "--checkpoint",
                        str(ckpt), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    gpt = GPT.from_pretrained(out / "gpt")
    assert gpt.config.seq_len == 256 and gpt.config.eos_target  # CLI default grid 16x16
    cb = load_codebook(out / "codebook.safetensors")
    torch.testing.assert_close(cb.vectors, centroids.half().float())


def test_embedded_dinov2_becomes_a_tokenizer_directory(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from vqgan_lc.digit import DiscriminativeTokenizer

    kw = dict(embed_dim=48, depth=6, num_heads=3, init_values=1.0)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=224, num_classes=0, **kw)
    n_dict = NSPECIAL + K_DIGIT
    s = _crafted_state(vocab_rows=n_dict, out_rows=n_dict, pre_ln=False, prefix_table=False, seed=4)
    centroids = torch.randn(K_DIGIT, 48)
    s["centroids"] = centroids.t().contiguous()
    s.update({f"pretrained_encoder.{k}": v for k, v in vit.state_dict().items()})
    conv = convert_digit(_save_fairseq(tmp_path / "ck.pt", s), grid=GRID)
    written = save_digit_conversion(conv, tmp_path / "out", dinov2_model="vit_small_patch14_reg4_dinov2", model_kwargs=kw)
    tok = DiscriminativeTokenizer.from_pretrained(written["tokenizer"])
    torch.testing.assert_close(tok.centroids, centroids)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    ids = tok.encode(x)
    assert ids.shape == (2, 16, 16) and int(ids.max()) < K_DIGIT


def test_refuses_pickled_objects_and_wrong_files(tmp_path: Path) -> None:
    s = _crafted_state(vocab_rows=NSPECIAL + K_DIGIT, out_rows=NSPECIAL + K_DIGIT, pre_ln=False, prefix_table=False, seed=0)
    ns = _save_fairseq(tmp_path / "ns.pt", s, args=argparse.Namespace(decoder_attention_heads=H))
    with pytest.raises(CheckpointError, match="cannot be read safely.*argparse.Namespace"):
        load_fairseq_checkpoint(ns)
    with pytest.raises(CheckpointError, match="stage-1 checkpoint, not stage2"):
        convert_digit(_save_fairseq(tmp_path / "ok.pt", s), stage="stage2", grid=GRID)
    torch.save({"model": {"encoder.x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no fairseq decoder weights"):
        convert_digit(tmp_path / "other.pt")
    torch.save({"model": s, "cfg": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="--n-head"):
        convert_digit(tmp_path / "nocfg.pt", grid=GRID)
    assert convert_digit(tmp_path / "nocfg.pt", n_head=H, grid=GRID).gpt.config.n_head == H
    torch.save({"model": s, "cfg": {"model": {"_name": "st2vtlm_nar", "decoder_attention_heads": H}}}, tmp_path / "nar.pt")
    with pytest.raises(CheckpointError, match="NAR"):
        convert_digit(tmp_path / "nar.pt", grid=GRID)


def test_digit_npy_centroids_load(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal((K_DIGIT, 8)).astype(np.float32)
    np.save(tmp_path / "km_8k.npy", arr)
    cb = load_codebook(tmp_path / "km_8k.npy")
    assert cb.vectors.shape == (K_DIGIT, 8) and np.array_equal(cb.vectors.numpy(), arr)
    np.save(tmp_path / "ints.npy", np.arange(6).reshape(2, 3))
    with pytest.raises(CodebookError, match="float"):
        load_codebook(tmp_path / "ints.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodebookError, match="not a readable .npy"):
        load_codebook(tmp_path / "obj.npy")


def test_old_config_without_new_fields_loads(tmp_path: Path) -> None:
    gpt = GPT(GPTConfig(n_codes=16, grid=(2, 2), n_layer=1, n_head=2, n_embd=8))
    d = gpt.config.to_dict()
    for k in ("norm_position", "embed_scale", "eos_target"):
        d.pop(k)
    c = GPTConfig.from_dict(d)
    assert (c.norm_position, c.embed_scale, c.eos_target) == ("pre", False, False)
    assert set(GPT(c).state_dict()) == set(gpt.state_dict())


def test_fairseq_preset_matches_a_converted_stage1_layout() -> None:
    from vqgan_lc.generate.gpt import gpt_config

    c = gpt_config("gpt-digit-stage1-base-fairseq")
    assert (c.norm_position, c.embed_scale, c.eos_target, c.n_positions) == ("post", True, True, 257)
    small = GPT(c.replace(n_codes=K_DIGIT, n_layer=1, n_embd=16, n_head=2))
    assert "ln_f.weight" not in small.state_dict() and small.head.weight.shape == (K_DIGIT + 1, 16)
