"""Feature extractors with random weights: shapes, the exact layers they read, and loading by path."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import photo
from PIL import Image
from torch import nn

from vqgan_lc._io import sha256_file
from vqgan_lc.data import Preprocessing
from vqgan_lc.errors import CheckpointError, MissingWeightsError
from vqgan_lc.extractors import (
    ClipExtractor,
    DINOv2Extractor,
    ExtractorError,
    ModuleExtractor,
    PixelExtractor,
    as_extractor,
    convert_dinov2_state_dict,
    create_extractor,
    load_clip,
    load_dinov2,
    pool_features,
)

VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


def pil(name: str) -> Image.Image:
    return Image.fromarray(photo(name))


def tiny_clip(seed: int = 0, quick_gelu: bool = False) -> nn.Module:
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(embed_dim=24, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=quick_gelu).eval()


def tiny_dinov2(seed: int = 0, img_size: int = 56, reg_tokens: int = 4, depth: int = 5) -> nn.Module:
    """A DINOv2-shaped timm ViT: patch 14, registers, layer scale, no position embedding on CLS/registers."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=img_size, patch_size=14, embed_dim=48, depth=depth, num_heads=3, reg_tokens=reg_tokens,
        no_embed_class=True, init_values=1.0, num_classes=0,
    ).eval()


def batch(pre: Preprocessing, names: tuple[str, ...] = ("astronaut", "coffee")) -> torch.Tensor:
    return torch.stack([pre(pil(n)) for n in names])


# ----------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("name", ["coffee", "rocket", "astronaut"])
def test_preprocess_equals_clips_own_transform(name: str) -> None:
    open_clip = pytest.importorskip("open_clip")
    ours = Preprocessing(224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    theirs = open_clip.image_transform(224, is_train=False)
    img = pil(name)
    a, b = ours(img), theirs(img)
    assert a.shape == b.shape == (3, 224, 224)
    assert torch.equal(a, b)


def test_preprocess_crop_is_centered_on_non_square_images() -> None:
    img = pil("rocket")  # 427 x 640 (h x w)
    x = Preprocessing(100)(img)
    ref = np.asarray(img.resize((int(100 * 640 / 427), 100), Image.BICUBIC), dtype=np.float32)
    left = int(round((ref.shape[1] - 100) / 2))
    expect = torch.from_numpy(ref[:, left : left + 100] / 255.0 * 2 - 1).permute(2, 0, 1)
    assert torch.allclose(x, expect, atol=1e-6)


# ----------------------------------------------------------------------------------------- pixels, pooling
def test_pixel_extractor_gives_raw_patches() -> None:
    ext = PixelExtractor(patch_size=16, image_size=64)
    x = batch(ext.preprocess)
    f = ext(x)
    assert f.shape == (2, 4, 4, 768)
    # vector (i, j) is the patch's pixels in (row, column, channel) order
    patch = x[1, :, 16:32, 32:48].permute(1, 2, 0).reshape(-1)
    assert torch.equal(f[1, 1, 2], patch)
    assert f.min() >= -1 and f.max() <= 1
    assert ext.describe()["extractor"] == "pixels" and ext.describe()["image_size"] == [64, 64]


def test_pooling_averages_k_by_k_cells() -> None:
    f = torch.randn(2, 16, 16, 8)
    p = pool_features(f, 4)
    assert p.shape == (2, 4, 4, 8)
    assert torch.allclose(p[1, 2, 3], f[1, 8:12, 12:16].mean(dim=(0, 1)), atol=1e-6)
    assert pool_features(f, 1) is f
    with pytest.raises(ExtractorError, match="--pool"):
        pool_features(f, 3)


def test_any_module_is_an_extractor() -> None:
    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 8, stride=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).permute(0, 2, 3, 1)

    ext = as_extractor(Grid(), image_size=32)
    assert isinstance(ext, ModuleExtractor)
    f = ext(batch(ext.preprocess))
    assert f.shape == (2, 4, 4, 5)
    d = ext.describe()
    assert d["extractor"] == "module" and len(d["state_dict_sha256"]) == 64
    bad = as_extractor(nn.Conv2d(3, 5, 8, stride=8), image_size=32)  # (B, C, h, w) is fine shape-wise ...
    assert bad(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 4, 4)
    flat = as_extractor(nn.Flatten(), image_size=32)  # ... but a non-grid output is an error
    with pytest.raises(ExtractorError, match=r"\(B, h, w, d\)"):
        flat(torch.zeros(1, 3, 32, 32))


# ----------------------------------------------------------------------------------------- CLIP
def test_clip_patch_tokens_are_ln_post_then_proj_without_cls() -> None:
    model = tiny_clip()
    ext = ClipExtractor(model)
    x = batch(ext.preprocess)
    assert x.shape == (2, 3, 32, 32)
    f = ext(x)
    assert f.shape == (2, 4, 4, 24)  # (32 / 8)^2 tokens of embed_dim 24
    # manual: embeddings -> transformer -> ln_post on every token -> drop CLS -> @ proj
    v = model.visual
    with torch.no_grad():
        tokens = v.ln_post(v.transformer(v._embeds(x)))
        manual = (tokens[:, 1:] @ v.proj).reshape(2, 4, 4, 24)
        # open_clip's output_tokens path returns the tokens after ln_post but before the projection
        v.output_tokens = True
        _, theirs = v(x)
        v.output_tokens = False
    assert torch.allclose(f, manual, atol=1e-5)
    assert torch.allclose(f, (theirs @ v.proj).reshape(2, 4, 4, 24), atol=1e-5)
    assert theirs.shape[-1] == VISION["width"] != f.shape[-1]  # so output_tokens alone is not the paper's feature


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "visual-only"])
def test_clip_checkpoint_loaded_by_path_matches_the_in_memory_model(tmp_path: Path, fmt: str) -> None:
    model = tiny_clip(seed=1)
    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT}))
    if fmt == "pt":
        weights = tmp_path / "tiny.pt"
        torch.save(model.state_dict(), weights)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        weights = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    else:
        weights = tmp_path / "visual.pt"
        torch.save({"state_dict": model.visual.state_dict()}, weights)
    loaded = load_clip(str(cfg), weights)
    ref = ClipExtractor(model)
    x = batch(ref.preprocess, ("chelsea", "hubble_deep_field"))
    assert torch.equal(loaded(x), ref(x))
    d = loaded.describe()
    assert d["weights"] == weights.name and d["weights_sha256"] == sha256_file(weights)
    assert d["model"] == "tiny-clip" and d["image_size"] == [32, 32]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_clip_torchscript_archive_loads_with_quick_gelu(tmp_path: Path) -> None:
    model = tiny_clip(seed=2, quick_gelu=True)

    class Holder(nn.Module):  # the OpenAI release is a TorchScript CLIP whose state dict has visual.*
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(Holder(), torch.zeros(1, 3, 32, 32), check_trace=False).save(str(archive))
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT}))
    loaded = load_clip(str(cfg), archive)  # quick_gelu inferred from the TorchScript archive
    x = batch(loaded.preprocess)
    ref = ClipExtractor(model)(x)
    assert torch.allclose(loaded(x), ref, atol=1e-6)
    plain = load_clip(str(cfg), archive, quick_gelu=False)
    assert not torch.allclose(plain(x), ref, atol=1e-4)  # QuickGELU matters


def test_clip_needs_weights_and_a_known_architecture(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="--weights"):
        create_extractor("clip")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_clip("ViT-L-14", tmp_path / "missing.pt")
    (tmp_path / "w.pt").write_bytes(b"junk")
    with pytest.raises(ExtractorError, match="unknown open_clip architecture"):
        load_clip("no-such-model", tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_clip("ViT-B-16", tmp_path / "w.pt")
    # the right file for the wrong architecture names the mismatch
    small = tmp_path / "small.pt"
    torch.save(tiny_clip().state_dict(), small)
    with pytest.raises(CheckpointError, match="--model"):
        load_clip("ViT-B-16", small)


# ----------------------------------------------------------------------------------------- DINOv2
def manual_dinov2(model: nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
    """Patch embed -> positions (+ CLS, registers) -> blocks[0..block] -> final norm -> drop CLS + registers."""
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for blk in model.blocks[: block + 1]:
            h = blk(h)
        h = model.norm(h)
    return h[:, model.num_prefix_tokens :]


def test_dinov2_layer_is_the_third_from_last_block_with_final_norm() -> None:
    model = tiny_dinov2(depth=5)
    assert model.num_prefix_tokens == 5  # CLS + 4 registers
    ext = DINOv2Extractor(model, layer=-3, load_size=64, image_size=56)
    assert ext.block_index == 2
    x = batch(ext.preprocess)
    assert x.shape == (2, 3, 64, 64)
    f = ext(x)
    assert f.shape == (2, 4, 4, 48)
    x56 = F.interpolate(x, size=(56, 56), mode="bicubic", align_corners=False)  # DiGIT: 256 -> 224
    want = manual_dinov2(model, x56, 2).reshape(2, 4, 4, 48)
    assert torch.allclose(f, want, atol=1e-5)
    for other in (1, 3, 4):  # and not a neighbouring block
        assert not torch.allclose(f, manual_dinov2(model, x56, other).reshape(2, 4, 4, 48), atol=1e-3)
    assert torch.allclose(DINOv2Extractor(model, layer=2, load_size=64, image_size=56)(x), f)
    assert ext.describe()["block_index"] == 2 and ext.describe()["layer"] == -3
    with pytest.raises(ExtractorError, match="out of range"):
        DINOv2Extractor(model, layer=5)


def _official_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of timm's DINOv2 conversion: registers separate, CLS position in pos_embed, mask_token."""
    out = {k: v.clone() for k, v in timm_state.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    d = timm_state["cls_token"].shape[-1]
    out["cls_token"] = timm_state["cls_token"].clone()
    out["register_tokens"] = timm_state["reg_token"].clone()
    out["pos_embed"] = torch.cat([torch.zeros(1, 1, d), timm_state["pos_embed"]], dim=1)
    out["mask_token"] = torch.zeros(1, d)
    return out


@pytest.mark.parametrize("fmt", ["timm", "official"])
def test_dinov2_loaded_by_path_matches_the_in_memory_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    import timm

    model = tiny_dinov2(seed=3)
    state = model.state_dict() if fmt == "timm" else _official_layout(model.state_dict())
    weights = tmp_path / "dinov2_tiny.pth"
    torch.save(state, weights)

    def create(name: str, pretrained: bool = False, img_size: int = 224, num_classes: int = 0,
               **kw: Any) -> nn.Module:
        assert name == "tiny_dinov2" and pretrained is False
        return tiny_dinov2(seed=99, img_size=img_size)  # other random weights: the file must overwrite them

    monkeypatch.setattr(timm, "create_model", create)
    monkeypatch.setattr(timm, "list_models", lambda *a, **k: ["tiny_dinov2"])
    loaded = load_dinov2("tiny_dinov2", weights, layer=-3, load_size=64, image_size=56)
    ref = DINOv2Extractor(model, layer=-3, load_size=64, image_size=56)
    x = batch(ref.preprocess, ("coffee", "retina"))
    assert torch.allclose(loaded(x), ref(x), atol=1e-6)
    assert loaded.describe()["weights_sha256"] == sha256_file(weights)


def test_dinov2_official_position_embedding_is_resampled_like_dinov2() -> None:
    src = tiny_dinov2(seed=4, img_size=56)  # 4 x 4 grid
    dst = tiny_dinov2(seed=5, img_size=42)  # 3 x 3 grid
    official = _official_layout(src.state_dict())
    converted = convert_dinov2_state_dict(official, dst)
    dst.load_state_dict(converted)
    # DINOv2's interpolate_pos_encoding: bicubic, scale (g + 0.1) / M, no antialias
    grid = official["pos_embed"][:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(3.1 / 4, 3.1 / 4), mode="bicubic", align_corners=False)
    assert dst.pos_embed.shape == (1, 9, 48)
    assert torch.allclose(dst.pos_embed, want.permute(0, 2, 3, 1).reshape(1, 9, -1), atol=1e-6)
    assert torch.equal(dst.reg_token, src.reg_token)


HUBCONF = '''
dependencies = ["torch", "timm"]
import torch
from timm.models.vision_transformer import VisionTransformer


class TinyDinoV2(torch.nn.Module):
    """The official DINOv2 hub API: get_intermediate_layers(x, n, reshape, return_class_token, norm)."""

    def __init__(self):
        super().__init__()
        self.vit = VisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=5, num_heads=3,
                                     reg_tokens=4, no_embed_class=True, init_values=1.0, num_classes=0)
        self.n_blocks = 5
        self.patch_size = 14
        self.num_register_tokens = 4

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        take = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n
        v = self.vit
        h = v.norm_pre(v._pos_embed(v.patch_embed(x)))
        outs = []
        for i, blk in enumerate(v.blocks):
            h = blk(h)
            if i in take:
                outs.append(v.norm(h) if norm else h)
        return tuple(o[:, 1 + self.num_register_tokens:] for o in outs)


def dinov2_tiny(pretrained=True, **kwargs):
    assert not pretrained, "tests never download"
    return TinyDinoV2()
'''


def test_dinov2_from_a_local_torch_hub_directory(tmp_path: Path) -> None:
    hub = tmp_path / "dinov2-repo"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF)
    net = torch.hub.load(str(hub), "dinov2_tiny", source="local", pretrained=False)
    torch.manual_seed(6)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    weights = tmp_path / "w.pth"
    torch.save(net.state_dict(), weights)
    loaded = load_dinov2("dinov2_tiny", weights, hub_dir=hub, layer=-3, load_size=64, image_size=56)
    assert loaded.hub_style and loaded.block_index == 2
    x = batch(loaded.preprocess)
    f = loaded(x)
    assert f.shape == (2, 4, 4, 48)
    x56 = F.interpolate(x, size=(56, 56), mode="bicubic", align_corners=False)
    assert torch.allclose(f, manual_dinov2(net.vit, x56, 2).reshape(2, 4, 4, 48), atol=1e-5)


def test_dinov2_needs_weights() -> None:
    with pytest.raises(MissingWeightsError, match="--weights"):
        create_extractor("dinov2")
    with pytest.raises(ExtractorError, match="unknown extractor"):
        create_extractor("sift")  # type: ignore[arg-type]


def test_state_dict_hash_changes_with_the_weights() -> None:
    a, b = ModuleExtractor(nn.Linear(2, 2)), ModuleExtractor(nn.Linear(2, 2))
    assert a.describe()["state_dict_sha256"] != b.describe()["state_dict_sha256"]
    assert math.isclose(len(a.describe()["state_dict_sha256"]), 64)
