"""The DiGIT discriminative tokenizer (random-weight DINOv2-shaped ViT), `encode --tokenizer digit`, and
the two-stage pipeline (stage 1 DiGIT ids -> stage 2 VQGAN-LC ids -> decoder) on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import photo_crops, tiny_model, write_photo_folder
from PIL import Image

from vqgan_lc import CheckpointError, CodebookError, FormatVersionError
from vqgan_lc.cli.main import main
from vqgan_lc.codebook import build_codebook, save_codebook
from vqgan_lc.data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, list_images, load_rgb
from vqgan_lc.digit import DiscriminativeTokenizer, ExtractorSpec, build_dinov2
from vqgan_lc.generate import GPT, GPTConfig, sample_two_stage
from vqgan_lc.tokenizer import load_tokenizer
from vqgan_lc.tokens import EncodeOptions, encode_dataset, open_tokens

ARCH = "vit_small_patch14_reg4_dinov2"
TINY_VIT = dict(embed_dim=48, depth=6, num_heads=3, init_values=1.0)  # DINOv2-shaped: patch 14, 4 registers;
# LayerScale 1.0 (as DiGIT builds it) so that with random weights neighbouring blocks differ clearly
K = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight tiny DINOv2 weights file, a photo folder, a K=32 codebook built from that ViT's
    block -3 features with faiss (20 iterations), and the tokenizer directory."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("digit")
    torch.manual_seed(0)
    vit = timm.create_model(ARCH, pretrained=False, img_size=224, num_classes=0, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "dinov2_tiny.safetensors"))
    write_photo_folder(root / "photos", per_class=2, size=96)
    spec = ExtractorSpec(model=ARCH, model_kwargs=TINY_VIT, weights=str(root / "dinov2_tiny.safetensors"))
    ext = build_dinov2(spec)
    ext.set_weights_info(root / "dinov2_tiny.safetensors")
    build_codebook(root / "photos", ext, root / "km.safetensors", k=K, niter=20, seed=0, progress=False, gpu=False)
    tok = DiscriminativeTokenizer.from_files(root / "km.safetensors", root / "dinov2_tiny.safetensors",
                                             model=ARCH, model_kwargs=TINY_VIT)
    tok.save_pretrained(root / "tokenizer")
    return {"root": root, "weights": root / "dinov2_tiny.safetensors", "codebook": root / "km.safetensors",
            "tokenizer": root / "tokenizer", "photos": root / "photos"}


def _manual_block_features(vit: torch.nn.Module, x224: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Run the ViT by hand: patch embed + positions (+ CLS/registers), blocks[:n_blocks], final norm,
    drop the 1 + 4 prefix tokens -> (B, 16, 16, d)."""
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x224))))
    for blk in vit.blocks[:n_blocks]:
        h = blk(h)
    h = vit.norm(h)[:, vit.num_prefix_tokens :]
    assert vit.num_prefix_tokens == 5
    return h.reshape(x224.shape[0], 16, 16, -1)


def test_digit_ids_shape_range_and_layer(digit: dict[str, Path]) -> None:
    tok = DiscriminativeTokenizer.from_pretrained(digit["tokenizer"])
    images = photo_crops(256, 3, seed=1)  # (3, 3, 256, 256) in [-1, 1]
    ids = tok.encode(images)
    assert ids.shape == (3, 16, 16) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < K and len(ids.unique()) > 4
    assert (tok.codebook_size, tok.latent_shape(256, 256), tok.downsample_factor) == (K, (16, 16), 16)

    # preprocessing: [-1, 1] -> ImageNet mean/std, bicubic 256 -> 224 inside the tokenizer
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x224 = F.interpolate(((images + 1) / 2 - mean) / std, size=(224, 224), mode="bicubic", align_corners=False)
    vit = tok.extractor.model
    with torch.no_grad():
        # layer -3 of a 6-block ViT is block index 3: the output of blocks[:4] (= blocks[:depth-2]) + final norm
        expected = _manual_block_features(vit, x224, 4)
        later = _manual_block_features(vit, x224, 5)
        feats = tok.features(images)
    assert tok.extractor.block_index == 3
    assert torch.allclose(feats, expected, atol=1e-5)
    assert not torch.allclose(feats, later, atol=1e-3)
    # ids = nearest centroid (squared L2) of those features
    d = torch.cdist(expected.reshape(-1, expected.shape[-1]), tok.centroids)
    assert torch.equal(ids.reshape(-1), d.argmin(1))


def test_digit_directory_round_trip_embedding_and_checks(digit: dict[str, Path], tmp_path: Path) -> None:
    tok = DiscriminativeTokenizer.from_pretrained(digit["tokenizer"])
    meta = json.loads((digit["tokenizer"] / "config.json").read_text())
    assert meta["format"] == "vqgan-lc-digit" and meta["format_version"] == 1
    assert meta["extractor"]["layer"] == -3 and meta["extractor"]["weights"] == str(digit["weights"].resolve())
    assert meta["extractor"]["weights_sha256"] and not meta["extractor"]["embedded"]
    x = photo_crops(256, 2, seed=2)
    # embedded copy: same ids, same config hash, no reference to the weights file
    tok.save_pretrained(tmp_path / "embedded", embed_weights=True)
    emb = load_tokenizer(tmp_path / "embedded")
    assert isinstance(emb, DiscriminativeTokenizer) and emb.config_hash() == tok.config_hash()
    assert torch.equal(emb.encode(x), tok.encode(x))
    # a truncated embedded weights file is a CheckpointError naming the file, not safetensors' own error
    w = tmp_path / "embedded" / "extractor.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="extractor.safetensors is corrupt"):
        DiscriminativeTokenizer.from_pretrained(tmp_path / "embedded")
    # a changed weights file is refused
    bad = tmp_path / "bad"
    tok.save_pretrained(bad)
    m = json.loads((bad / "config.json").read_text())
    m["extractor"]["weights_sha256"] = "0" * 64
    (bad / "config.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="sha256"):
        DiscriminativeTokenizer.from_pretrained(bad)
    m["format_version"] = 9
    (bad / "config.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError):
        DiscriminativeTokenizer.from_pretrained(bad)
    # centroids clustered from another extractor are refused
    save_codebook(tmp_path / "clip.safetensors", torch.randn(K, 48), {"extractor": "clip", "pooling": 1})
    with pytest.raises(CodebookError, match="clip"):
        DiscriminativeTokenizer.from_files(tmp_path / "clip.safetensors", digit["weights"], model=ARCH,
                                           model_kwargs=TINY_VIT)
    # ... unless the user says so (`vqgan-lc encode --no-provenance-check`)
    forced = DiscriminativeTokenizer.from_files(tmp_path / "clip.safetensors", digit["weights"], model=ARCH,
                                                model_kwargs=TINY_VIT, check_provenance=False)
    assert forced.codebook_size == K
    from vqgan_lc.cli.main import build_parser

    argv = ["encode", "--tokenizer", "digit", "--codebook", "c", "--weights", "w", "--data", "d", "--out", "o"]
    assert build_parser().parse_args([*argv, "--no-provenance-check"]).no_provenance_check is True
    assert build_parser().parse_args(argv).no_provenance_check is False
    save_codebook(tmp_path / "wrongdim.safetensors", torch.randn(K, 40), {})
    with pytest.raises(CodebookError, match="40-d"):
        DiscriminativeTokenizer.from_files(tmp_path / "wrongdim.safetensors", digit["weights"], model=ARCH,
                                           model_kwargs=TINY_VIT)


def test_encode_cli_with_digit_tokenizer_writes_token_directory(digit: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tok-digit"
    rc = main(["encode", "--tokenizer", "digit", "--model", str(digit["tokenizer"]), "--data", str(digit["photos"]),
               "--out", str(out), "--num-workers", "0", "--batch-size", "4", "--shard-size", "4", "--device", "cpu"])
    assert rc == 0
    tok = open_tokens(out)
    assert len(tok) == 6 and tok.grid == (16, 16) and tok.codebook_size == K
    assert tok.manifest["tokenizer"]["kind"] == "digit"
    assert tok.manifest["preprocessing"]["image_size"] == 256
    model = DiscriminativeTokenizer.from_pretrained(digit["tokenizer"])
    assert tok.manifest["tokenizer"]["config_hash"] == model.config_hash()
    pre = Preprocessing(256)
    x = torch.stack([pre(load_rgb(digit["photos"] / p)) for p in list_images(digit["photos"]).paths])
    assert np.array_equal(tok[:].astype(np.int64), model.encode(x).numpy())
    # the kind flag is checked against the directory
    assert main(["encode", "--tokenizer", "vqgan-lc", "--model", str(digit["tokenizer"]), "--data",
                 str(digit["photos"]), "--out", str(tmp_path / "x")]) == 1
    # without --model and with --tokenizer digit, --codebook + --weights are required
    assert main(["encode", "--tokenizer", "digit", "--codebook", str(digit["codebook"]), "--data",
                 str(digit["photos"]), "--out", str(tmp_path / "y")]) == 1


def _random_gpt(seed: int, **cfg) -> GPT:  # noqa: ANN003
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, **cfg)).eval()


def test_two_stage_pipeline_end_to_end_writes_images(digit: dict[str, Path], tmp_path: Path) -> None:
    """Tiny random stage 1 (16x16 DiGIT ids, K=32, 3 classes) -> stage 2 (prefix of 256 DiGIT ids -> 8x8
    ids of a tiny VQGAN-LC with 512 codes) -> decoder; API and CLI."""
    vq = tiny_model()
    s1 = _random_gpt(1, n_codes=K, grid=(16, 16), n_classes=3)
    s2 = _random_gpt(2, n_codes=512, grid=(8, 8), prefix_vocab=K, prefix_grid=(16, 16))
    res = sample_two_stage(s1, s2, vq, n=3, labels=[0, 1, 2], seed=0, batch_size=2)
    assert res.images.shape == (3, 3, 64, 64) and res.images.abs().max() <= 1.0
    assert res.prefix_ids.shape == (3, 16, 16) and int(res.prefix_ids.max()) < K
    assert res.ids.shape == (3, 8, 8) and int(res.ids.max()) < 512
    # stage 2 really conditions on the prefix: another prefix gives other logits
    p1, p2 = res.prefix_ids[:1].reshape(1, -1), res.prefix_ids[1:2].reshape(1, -1)
    with torch.no_grad():
        assert not torch.allclose(s2(torch.zeros(1, 0, dtype=torch.long), None, p1),
                                  s2(torch.zeros(1, 0, dtype=torch.long), None, p2))

    vq.save_pretrained(tmp_path / "vq")
    s1.save_pretrained(tmp_path / "s1")
    s2.save_pretrained(tmp_path / "s2")
    out = tmp_path / "samples"
    rc = main(["sample", "--gpt", str(tmp_path / "s1"), "--stage2", str(tmp_path / "s2"), "--tokenizer",
               str(tmp_path / "vq"), "--class", "2", "--n", "2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["class0002_00000.png", "class0002_00001.png"]
    assert Image.open(pngs[0]).size == (64, 64)
    assert np.load(out / "digit_ids.npy").shape == (2, 16, 16) and np.load(out / "ids.npy").shape == (2, 8, 8)
    # a stage 2 whose prefix does not fit stage 1 is refused
    bad = _random_gpt(3, n_codes=512, grid=(8, 8), prefix_vocab=K, prefix_grid=(8, 8))
    with pytest.raises(ValueError, match="prefix"):
        sample_two_stage(s1, bad, vq, n=1)


@pytest.mark.slow
def test_two_stage_trained_from_token_directories(digit: dict[str, Path], tmp_path: Path) -> None:
    """The whole DiGIT recipe on CPU: encode the same photos with the DiGIT tokenizer and a tiny VQGAN-LC,
    train stage 1 on the DiGIT ids and stage 2 on VQGAN-LC ids with the DiGIT prefix, sample, decode."""
    photos = digit["photos"]
    vq_dir = tiny_model().save_pretrained(tmp_path / "vq")
    opts = EncodeOptions(image_size=64, batch_size=8, num_workers=0, shard_size=8)
    encode_dataset(vq_dir, photos, tmp_path / "tok-vq", options=opts, progress=False)
    encode_dataset(digit["tokenizer"], photos, tmp_path / "tok-digit",
                   options=EncodeOptions(image_size=256, batch_size=8, num_workers=0, shard_size=8), progress=False)
    cfg = "gpt_tiny_cpu"  # a config shipped in vqgan_lc/configs, by name
    common = ["--config", cfg, "--max-steps", "20", "--no-progress"]
    assert main(["train-gpt", "--tokens", str(tmp_path / "tok-digit"), "--out", str(tmp_path / "s1"), *common]) == 0
    assert main(["train-gpt", "--tokens", str(tmp_path / "tok-vq"), "--prefix-tokens", str(tmp_path / "tok-digit"),
                 "--out", str(tmp_path / "s2"), "--set", "model.n_classes=0", *common]) == 0
    s1, s2 = GPT.from_pretrained(tmp_path / "s1"), GPT.from_pretrained(tmp_path / "s2")
    assert (s1.config.n_codes, s1.config.grid, s1.config.n_classes) == (K, (16, 16), 3)
    assert (s2.config.prefix_vocab, s2.config.prefix_len, s2.config.n_codes, s2.config.grid) == (K, 256, 512, (8, 8))
    assert s2.provenance["prefix_tokens"]["tokenizer"]["kind"] == "digit"
    out = tmp_path / "samples"
    assert main(["sample", "--gpt", str(tmp_path / "s1"), "--stage2", str(tmp_path / "s2"), "--tokenizer",
                 str(vq_dir), "--class", "0", "1", "--n", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert len(list(out.glob("class*.png"))) == 4
