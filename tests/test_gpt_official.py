"""The official VQGAN-LC GPT release (minGPT layout) -> our GPT: logits, loading by name, sampling end to end.

The checkpoint is crafted here in the official layout (``transformer.*`` minGPT keys + the embedded
``vqgan.*`` tokenizer, as ``training_gpt.py`` saves ``VQGANTransformer.state_dict()``), and the reference
logits come from a plain re-derivation of the minGPT forward written below (embeddings + positions,
pre-LN blocks with separate query/key/value projections and a causal softmax, a 4x GELU MLP, final
LayerNorm, a head over the whole vocabulary).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqgan_lc.cli.main import main
from vqgan_lc.convert_gpt import convert_official_gpt
from vqgan_lc.errors import CheckpointError
from vqgan_lc.generate.gpt import GPT

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_model
from hub_server import COMMIT, FakeHub
from test_hub import run_client

pytestmark = pytest.mark.usefixtures("one_thread")

N_CODES, N_CLASSES, GRID = 512, 4, (8, 8)  # the tiny VQGAN-LC: 512 codes, f8 at 64 px
VOCAB, BLOCK = N_CODES + N_CLASSES, GRID[0] * GRID[1] + 1
N_LAYER, N_HEAD, D = 2, 2, 32


def mingpt_state(seed: int = 0, dtype: torch.dtype = torch.float32, *, n_codes: int = N_CODES,
                 n_classes: int = N_CLASSES, grid: tuple[int, int] = GRID) -> dict[str, torch.Tensor]:
    """Random weights under the official key names (std large enough that every logit matters)."""
    g = torch.Generator().manual_seed(seed)
    vocab, block = n_codes + n_classes, grid[0] * grid[1] + 1

    def rnd(*shape: int, std: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    s: dict[str, torch.Tensor] = {"transformer.tok_emb.weight": rnd(vocab, D, std=1.0),
                                  "transformer.pos_emb": rnd(1, block, D, std=0.5)}
    for i in range(N_LAYER):
        b = f"transformer.blocks.{i}."
        for ln in ("ln1", "ln2"):
            s[b + ln + ".weight"] = 1 + rnd(D, std=0.1)
            s[b + ln + ".bias"] = rnd(D, std=0.1)
        for name in ("key", "query", "value", "proj"):
            s[b + f"attn.{name}.weight"] = rnd(D, D)
            s[b + f"attn.{name}.bias"] = rnd(D, std=0.1)
        s[b + "attn.mask"] = torch.ones(block, block).tril().view(1, 1, block, block)
        s[b + "mlp.0.weight"], s[b + "mlp.0.bias"] = rnd(4 * D, D), rnd(4 * D, std=0.1)
        s[b + "mlp.2.weight"], s[b + "mlp.2.bias"] = rnd(D, 4 * D), rnd(D, std=0.1)
    s["transformer.ln_f.weight"], s["transformer.ln_f.bias"] = 1 + rnd(D, std=0.1), rnd(D, std=0.1)
    s["transformer.head.weight"] = rnd(vocab, D)
    # the frozen tokenizer the GPT was trained with: its codebook gives n_vision_words
    s["vqgan.tok_embeddings.weight"] = torch.randn(n_codes, 768, generator=g)
    s["vqgan.quant_conv.weight"] = torch.randn(8, 64, 1, 1, generator=g)
    return s


def reference_logits(state: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """The minGPT forward, re-derived step by step: ``(B, T)`` input ids -> ``(B, T, vocab)`` logits."""
    w = {k.removeprefix("transformer."): v.double() for k, v in state.items() if k.startswith("transformer.")}
    b, t = idx.shape
    x = w["tok_emb.weight"][idx] + w["pos_emb"][0, :t]
    hs = D // N_HEAD
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(N_LAYER):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), w[p + "ln1.weight"], w[p + "ln1.bias"])
        q, k, v = (F.linear(h, w[p + f"attn.{n}.weight"], w[p + f"attn.{n}.bias"]).view(b, t, N_HEAD, hs).transpose(1, 2)
                   for n in ("query", "key", "value"))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, D)
        x = x + F.linear(y, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), w[p + "ln2.weight"], w[p + "ln2.bias"])
        m = F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        x = x + F.linear(m, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
    x = F.layer_norm(x, (D,), w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["head.weight"].T


@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt") / "gpt-lc-tiny.pth"
    torch.save(mingpt_state(), path)
    return path


def official_inputs(seed: int = 1, b: int = 3, t: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N_CODES, (b, t), generator=g), torch.randint(0, N_CLASSES, (b,), generator=g)


# ----------------------------------------------------------------------------------------- conversion
def test_converted_logits_equal_the_mingpt_rederivation(official_file: Path) -> None:
    gpt = convert_official_gpt(official_file, n_head=N_HEAD)
    c = gpt.config
    assert (c.n_codes, c.n_classes, c.grid, c.n_layer, c.n_head, c.n_embd) == (N_CODES, N_CLASSES, GRID, N_LAYER, N_HEAD, D)
    assert c.head == "vocabulary" and not c.null_class and c.input_vocab == VOCAB and gpt.head_outputs == VOCAB
    assert gpt.provenance["dropped_tokenizer_tensors"] == 2 and gpt.provenance["dropped_positions"] == 1

    ids, labels = official_inputs()
    ref = reference_logits(mingpt_state(), torch.cat([labels[:, None] + N_CODES, ids], dim=1))  # official sample()
    with torch.no_grad():
        full = gpt(ids, labels, full=True).double()
        codes = gpt(ids, labels).double()
    assert full.shape == (3, 21, VOCAB) and codes.shape == (3, 21, N_CODES)
    assert ref.abs().max() > 1.0  # a test that could fail: the logits are far from zero
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(codes, ref[..., :N_CODES], rtol=1e-4, atol=1e-4)

    # the KV-cache path (what sampling runs) gives the same next-token logits step by step
    with torch.no_grad():
        cache = gpt.new_cache(3)
        steps = [gpt.prefill(cache, 3, labels)] + [gpt.decode_step(cache, ids[:, i]) for i in range(ids.shape[1])]
    torch.testing.assert_close(torch.stack(steps, 1).double(), ref[..., :N_CODES], rtol=1e-4, atol=1e-4)

    # the loss is the official cross-entropy over the whole 516-way head
    full_ids = torch.randint(0, N_CODES, (2, GRID[0] * GRID[1]), generator=torch.Generator().manual_seed(5))
    lab = torch.tensor([0, 3])
    ref_full = reference_logits(mingpt_state(), torch.cat([lab[:, None] + N_CODES, full_ids[:, :-1]], dim=1))
    want = F.cross_entropy(ref_full.reshape(-1, VOCAB), full_ids.reshape(-1))
    with torch.no_grad():
        assert abs(float(gpt.loss(full_ids, lab)) - float(want)) < 1e-4


def test_fp16_deepspeed_wrapped_file_and_refusals(tmp_path: Path) -> None:
    half = {"module." + k: v.half() if v.is_floating_point() else v for k, v in mingpt_state(seed=2).items()}
    wrapped = tmp_path / "ds.pt"
    torch.save({"module": half, "global_steps": 7}, wrapped)
    gpt = convert_official_gpt(wrapped, n_head=N_HEAD)
    assert all(p.dtype == torch.float32 for p in gpt.parameters())
    ids, labels = official_inputs(seed=3, t=5)
    ref = reference_logits({k.removeprefix("module."): v for k, v in half.items()},
                           torch.cat([labels[:, None] + N_CODES, ids], 1))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids, labels, full=True).double(), ref, rtol=1e-4, atol=1e-4)

    with pytest.raises(CheckpointError, match=f"trained with a {N_CODES:,}-code tokenizer, not 1,000"):
        convert_official_gpt(wrapped, n_head=N_HEAD, n_codes=1000)
    with pytest.raises(CheckpointError, match="is not a multiple of 5 heads"):
        convert_official_gpt(wrapped, n_head=5)
    bad_mask = mingpt_state()
    bad_mask["transformer.blocks.1.attn.mask"] = torch.ones(1, 1, BLOCK, BLOCK)
    torch.save(bad_mask, tmp_path / "mask.pth")
    with pytest.raises(CheckpointError, match="blocks.1.attn.mask is not the plain causal mask"):
        convert_official_gpt(tmp_path / "mask.pth", n_head=N_HEAD)
    torch.save({"vqgan.encoder.w": torch.zeros(2)}, tmp_path / "vq.pth")
    with pytest.raises(CheckpointError, match="not an official VQGAN-LC minGPT checkpoint"):
        convert_official_gpt(tmp_path / "vq.pth")


def test_a_pickle_needing_other_classes_is_refused_without_running_it(tmp_path: Path) -> None:
    import pathlib

    path = tmp_path / "evil.pth"
    torch.save({"transformer.tok_emb.weight": torch.zeros(2, 2), "extra": pathlib.PurePosixPath("/x")}, path)
    with pytest.raises(CheckpointError, match="cannot be read safely as an official VQGAN-LC GPT checkpoint"):
        convert_official_gpt(path)


# ----------------------------------------------------------------------------------------- CLI: convert, sample
def test_convert_then_sample_end_to_end_through_the_cli(official_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    tok = tiny_model(seed=4).save_pretrained(tmp_path / "tok")
    out = tmp_path / "gpt"
    assert main(["convert", "--format", "gpt", "--checkpoint", str(official_file), "--n-head", str(N_HEAD),
                 "--out", str(out)]) == 0
    assert f"{N_CODES} image ids + {N_CLASSES} classes, 8x8 grid" in capsys.readouterr().out
    assert GPT.from_pretrained(out).config.head == "vocabulary"
    from vqgan_lc.generate.gpt import describe

    info = describe(out).fields
    assert info["head"].startswith("full") and info["input_vocab"] == VOCAB and info["classes"] == N_CLASSES

    samples = tmp_path / "samples"
    assert main(["sample", "--gpt", str(out), "--tokenizer", str(tok), "--class", "1", "3", "--n", "2",
                 "--top-k", "50", "--device", "cpu", "--out", str(samples)]) == 0
    ids = np.load(samples / "ids.npy")
    assert ids.shape == (4, 8, 8) and ids.min() >= 0 and ids.max() < N_CODES
    assert np.load(samples / "labels.npy").tolist() == [1, 1, 3, 3]
    pngs = sorted(p.name for p in samples.glob("*.png"))
    assert pngs == ["class0001_00000.png", "class0001_00001.png", "class0003_00002.png", "class0003_00003.png"]

    # the official GPT has no null class: sampling without --class says what to pass, in one sentence
    capsys.readouterr()
    assert main(["sample", "--gpt", str(out), "--tokenizer", str(tok), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert f"is class-conditional without a null class (as the official VQGAN-LC GPT); pass --class with indices " \
           f"in [0, {N_CLASSES})" in err and err.count("\n") == 1

    with pytest.raises(SystemExit) as exc:  # argparse: a VQGAN option with --format gpt
        main(["convert", "--format", "gpt", "--checkpoint", str(official_file), "--preset", "tiny",
              "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "--preset do not apply to --format gpt" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- by name, cached
@pytest.mark.slow  # two fresh interpreters against the loopback Hub
def test_gpt_release_by_name_downloads_converts_once_and_samples_with_its_tokenizer(
    official_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {"name": "test-gpt-release", "kind": "gpt", "repo": "testorg/VQ", "tokenizer": "vqgan-lc-f16-100k",
           "options": {"n_head": N_HEAD},
           "checkpoint": {"path": "mbin/gpt-lc-tiny.pth", "listed": "1M", "size": official_file.stat().st_size}}
    with FakeHub({"testorg/VQ": {"mbin/gpt-lc-tiny.pth": official_file}}) as hub:
        first = run_client(hub, tmp_path, {"name": "test-gpt-release", "kwargs": {"kind": "gpt"}, "releases": [row]})
        before = len(hub.requests)
        again, wrong_kind = run_client(hub, tmp_path, {"calls": [{"name": "test-gpt-release", "kwargs": {"kind": "gpt"}},
                                                                 {"name": "test-gpt-release"}],
                                                       "releases": [row], "forbid_pickle": True}, offline=True)
        assert len(hub.requests) == before  # the converted copy is enough: no request, no pickle
    path = Path(first["path"])
    assert again == first and path == tmp_path / "vqgan-lc" / "converted" / "test-gpt-release--main"
    assert "is a gpt release, not a vqgan-lc model" in wrong_kind["message"]

    gpt = GPT.from_pretrained(path)
    assert gpt.provenance["tokenizer_release"] == "vqgan-lc-f16-100k"
    assert gpt.provenance["release"]["commit"] == COMMIT and gpt.provenance["release"]["release"] == "test-gpt-release"
    ids, labels = official_inputs(seed=7, t=9)
    ref = reference_logits(mingpt_state(), torch.cat([labels[:, None] + N_CODES, ids], 1))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids, labels, full=True).double(), ref, rtol=1e-4, atol=1e-4)

    # sample with the converted release and a tokenizer (a tiny VQGAN-LC standing in for vqgan-lc-f16-100k)
    tok = tiny_model(seed=4).save_pretrained(tmp_path / "tok")
    assert main(["sample", "--gpt", str(path), "--tokenizer", str(tok), "--class", "2", "--n", "1",
                 "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "ids.npy").shape == (1, 8, 8)


@pytest.mark.slow  # two fresh interpreters against the loopback Hub
def test_sample_by_release_names_through_the_cli_with_the_tokenizer_the_gpt_records(
    official_tiny: Path, tmp_path: Path
) -> None:
    from test_hub import RELEASE_REPO, release_row

    gpt_file = tmp_path / "gpt.pth"  # a GPT over the fixture tokenizer: 1000 codes, f16 at 64 px -> 4x4 ids
    torch.save(mingpt_state(seed=9, n_codes=1000, n_classes=3, grid=(4, 4)), gpt_file)
    tok_row = release_row(official_tiny, "vqgan-lc-f16-100k")  # the test-only override of the real row
    gpt_row = {"name": "test-gpt-release", "kind": "gpt", "repo": RELEASE_REPO, "tokenizer": "vqgan-lc-f16-100k",
               "options": {"n_head": N_HEAD}, "checkpoint": {"path": "mbin/gpt.pth", "listed": "1M",
                                                            "size": gpt_file.stat().st_size}}
    files = {"mbin/vqgan_lc_official_format.pth": official_tiny / "vqgan_lc_official_format.pth",
             "mbin/codebook.pth": official_tiny / "codebook.pth", "mbin/gpt.pth": gpt_file}
    argv = ["sample", "--gpt", "test-gpt-release", "--class", "2", "--n", "2", "--device", "cpu", "--seed", "3"]
    with FakeHub({RELEASE_REPO: files}) as hub:
        first = run_client(hub, tmp_path, {"cli": [*argv, "--out", str(tmp_path / "a")], "releases": [tok_row, gpt_row]})
        n = len(hub.requests)
        again = run_client(hub, tmp_path, {"cli": [*argv, "--offline", "--out", str(tmp_path / "b")],
                                           "releases": [tok_row, gpt_row]})
        assert len(hub.requests) == n  # the second run reads the converted copies only
    assert first == {"rc": 0} and again == {"rc": 0}
    ids = np.load(tmp_path / "a" / "ids.npy")
    assert ids.shape == (2, 4, 4) and ids.min() >= 0 and ids.max() < 1000
    assert np.array_equal(ids, np.load(tmp_path / "b" / "ids.npy"))  # same seed, same samples
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["class0002_00000.png", "class0002_00001.png"]


def test_the_registered_gpt_release_converts_with_the_official_sizes() -> None:
    from vqgan_lc.hub import _CONVERTERS
    from vqgan_lc.releases import get_release

    r = get_release("vqgan-lc-gpt-f16-100k")
    assert r.kind == "gpt" and r.tokenizer == "vqgan-lc-f16-100k" and "gpt" in _CONVERTERS
    assert r.options == {"n_head": 16, "n_codes": 100_000} and r.checkpoint.path == "mbin/gpt-lc-100K-f16.pth"
