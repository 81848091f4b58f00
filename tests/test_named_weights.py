"""Pretrained extractors and metric networks by the names their libraries use (``vqgan_lc.named_weights``).

Every cache is pre-populated here with randomly initialised weights saved where its library looks: the torch
hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``) for the LPIPS trunks, the FID Inception and the DINOv2
torch.hub files; a Hugging Face cache (``models--org--name/snapshots/<commit>/file``) for open_clip tags and
timm names. Offline mode is on wherever a name is resolved from a cache; downloads go to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import vqgan_lc.hub
from vqgan_lc.errors import ExtractorError, PretrainedNotFoundError
from vqgan_lc.named_weights import (
    CHECKPOINTS,
    HubCheckpoint,
    cached_checkpoint,
    checkpoint_names,
    fetch_checkpoint,
    find_checkpoint,
    resolve_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import photo_crops
from hub_server import COMMIT, FakeHub

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; returns its ``checkpoints`` folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Offline mode for this test only (as --offline, without touching the process for later tests)."""
    monkeypatch.setattr(vqgan_lc.hub, "_forced_offline", True)
    yield


def hf_cache_file(cache: Path, repo: str, filename: str) -> Path:
    """Where huggingface_hub keeps ``repo``'s ``filename`` at ``main``: snapshots/<commit>/, refs/main = commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def alexnet_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the shapes of torchvision's AlexNet ``features.*`` (what LPIPS reads of the file)."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items() if k.startswith("features.")}


# ----------------------------------------------------------------------------------------- the torch hub cache
def test_the_table_names_the_files_where_their_libraries_cache_them() -> None:
    assert CHECKPOINTS["vgg16"].filename == "vgg16-397923af.pth" and CHECKPOINTS["vgg16"].check_hash
    assert CHECKPOINTS["alexnet"].url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert CHECKPOINTS["torch-fidelity"].filename == "weights-inception-2015-12-05-6726825d.pth"
    assert CHECKPOINTS["dinov2_vitb14_reg"].filename == "dinov2_vitb14_reg4_pretrain.pth"
    assert CHECKPOINTS["dinov2_vitb14_reg"].url.endswith("/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth")
    assert find_checkpoint("torchvision", "lpips-alex") is CHECKPOINTS["alexnet"]
    assert find_checkpoint("torchvision", "lpips-vgg") is CHECKPOINTS["vgg16"]
    assert find_checkpoint("https://download.pytorch.org/models/vgg16-397923af.pth") is CHECKPOINTS["vgg16"]
    assert find_checkpoint("vgg16", "inception") is None
    assert checkpoint_names("inception") == ["torch-fidelity", "torchmetrics", "pytorch-fid"]
    from vqgan_lc.extractors import DINOV2_HUB_TO_TIMM

    assert {k for k, c in CHECKPOINTS.items() if c.role == "dinov2"} == set(DINOV2_HUB_TO_TIMM)


def test_lpips_trunk_by_name_and_by_default_from_the_cache(torch_home: Path, offline: None) -> None:
    from vqgan_lc.metrics.perceptual import LPIPSMetric

    assert resolve_checkpoint(None, "lpips-alex") is None and cached_checkpoint("lpips-alex") is None
    state = alexnet_features()
    path = torch_home / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    for name in (None, "torchvision", "alexnet", "alexnet-owt-7be5be79.pth", CHECKPOINTS["alexnet"].url):
        assert resolve_checkpoint(name, "lpips-alex") == path
    local = torch_home.parent / "mine.pth"
    torch.save(state, local)
    assert resolve_checkpoint(local, "lpips-alex") == local  # a path wins
    assert resolve_checkpoint("no/such/file.pth", "lpips-alex") == Path("no/such/file.pth")  # the loader says

    metric = LPIPSMetric("alex", "torchvision")
    assert torch.equal(metric.lpips.net.state_dict()["slice1.0.weight"], state["features.0.weight"])
    x = photo_crops(64, 2, seed=1)
    d = metric(x, x.flip(-1))
    assert d.shape == (2,) and bool((d > 0).all()) and float(metric(x, x).abs().max()) < 1e-6

    with pytest.raises(PretrainedNotFoundError) as e:  # VGG16 is not cached and offline mode is on
        resolve_checkpoint("torchvision", "lpips-vgg", option="--lpips-vgg-weights")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and str(torch_home) in msg and "offline mode is on (--offline)" in msg
    assert "--lpips-vgg-weights" in msg and "\n" not in msg


def test_fid_inception_by_name_and_by_default_from_the_cache(torch_home: Path, offline: None) -> None:
    from vqgan_lc.metrics.fid import read_inception_weights
    from vqgan_lc.metrics.samples import find_inception_weights

    state = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": torch.randn(1008, 2048)}
    assert resolve_checkpoint(None, "inception") is None
    torch.save(state, torch_home / "pt_inception-2015-12-05-6726825d.pth")  # only pytorch-fid's file is cached
    assert resolve_checkpoint(None, "inception") == torch_home / "pt_inception-2015-12-05-6726825d.pth"
    assert torch.equal(read_inception_weights("pytorch-fid")["fc.weight"], state["fc.weight"])
    with pytest.raises(PretrainedNotFoundError, match="weights-inception-2015-12-05-6726825d.pth .* offline mode is on"):
        read_inception_weights("torch-fidelity")
    torch.save(state, torch_home / "weights-inception-2015-12-05-6726825d.pth")
    assert resolve_checkpoint(None, "inception") == torch_home / "weights-inception-2015-12-05-6726825d.pth"  # first
    for name in ("torch-fidelity", "torchmetrics", CHECKPOINTS["torch-fidelity"].url):
        assert find_inception_weights(name) == torch_home / "weights-inception-2015-12-05-6726825d.pth"
    assert find_inception_weights() == torch_home / "weights-inception-2015-12-05-6726825d.pth"


def test_a_named_file_is_fetched_into_the_cache_with_its_hash_prefix_checked(torch_home: Path, tmp_path: Path) -> None:
    good = b"pretend weights" * 100
    prefix = hashlib.sha256(good).hexdigest()[:8]
    entry = HubCheckpoint("test-net", "lpips-vgg", f"test-net-{prefix}.pth", "", "test", check_hash=True)
    with FakeHub({"files/net": {entry.filename: good, "test-net-00000000.pth": good}}) as hub:
        url = f"{hub.url}/files/net/resolve/main/{entry.filename}"
        got = fetch_checkpoint(HubCheckpoint(entry.key, entry.role, entry.filename, url, "test", check_hash=True))
        assert got == torch_home / entry.filename and got.read_bytes() == good
        n = len(hub.requests)
        assert fetch_checkpoint(HubCheckpoint(entry.key, entry.role, entry.filename, url, "test")) == got
        assert len(hub.requests) == n  # cached: no second request
        bad = HubCheckpoint("bad", "lpips-vgg", "test-net-00000000.pth",
                            f"{hub.url}/files/net/resolve/main/test-net-00000000.pth", "test", check_hash=True)
        with pytest.raises(PretrainedNotFoundError, match="could not be downloaded from .* retry, or pass a local copy"):
            fetch_checkpoint(bad)
    assert not (torch_home / "test-net-00000000.pth").exists()  # a file failing its hash is not kept


def test_evaluate_finds_the_cached_lpips_trunk_without_an_option(torch_home: Path, tmp_path: Path) -> None:
    from conftest import tiny_model
    from PIL import Image

    from vqgan_lc.metrics.evaluate import EvaluateOptions, evaluate

    torch.save(alexnet_features(), torch_home / "alexnet-owt-7be5be79.pth")
    data = tmp_path / "photos"
    data.mkdir()
    for i, img in enumerate(photo_crops(64, 3, seed=2)):
        Image.fromarray(((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(data / f"{i}.png")
    report = evaluate(tiny_model(seed=1), data, tmp_path / "report", options=EvaluateOptions(num_workers=0),
                      device="cpu", progress=False)
    alex, vgg = report["metrics"]["lpips_alex"], report["metrics"]["lpips_vgg"]
    assert alex["computed"] and alex["value"] > 0 and alex["num_images"] == 3
    assert not vgg["computed"] and "none in the torch hub cache" in vgg["reason"]


# ----------------------------------------------------------------------------------------- open_clip tags
TINY_CLIP = {"embed_dim": 16, "quick_gelu": False,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, torch.Tensor]]:
    """An open_clip architecture + pretrained tag (``hf_hub`` repo ``testorg/tiny-clip``) registered for the test,
    its weights (a randomly initialised tower) in a Hugging Face cache; returns (cache dir, the saved weights)."""
    import open_clip
    import open_clip.factory
    import open_clip.pretrained
    from safetensors.torch import save_file

    from vqgan_lc.extractors.clip import _build_open_clip_visual

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vqgan-lc-test-tiny", TINY_CLIP)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "vqgan-lc-test-tiny",
                        {"testtag": {"hf_hub": "testorg/tiny-clip/", "quick_gelu": True,
                                     "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}})
    torch.manual_seed(0)
    visual = _build_open_clip_visual(open_clip, TINY_CLIP, quick_gelu=True)
    state = {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    cache = tmp_path / "hf"
    save_file(state, str(hf_cache_file(cache, "testorg/tiny-clip", "open_clip_model.safetensors")))
    return cache, state


def test_clip_by_open_clip_tag_from_the_cache_offline(tiny_clip_tag: tuple[Path, dict[str, torch.Tensor]],
                                                      offline: None) -> None:
    from vqgan_lc.extractors import create_extractor, load_clip

    cache, state = tiny_clip_tag
    ext = load_clip("vqgan-lc-test-tiny", pretrained="testtag", cache_dir=cache)
    assert torch.equal(ext.visual.state_dict()["conv1.weight"], state["visual.conv1.weight"])
    assert ext.preprocess.mean == (0.5, 0.5, 0.5) and ext.preprocess.std == (0.25, 0.25, 0.25)
    info = ext.describe()
    assert info["pretrained"] == "open_clip:vqgan-lc-test-tiny/testtag" and info["weights"] == "open_clip_model.safetensors"
    feats = ext(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 4, 4, 16)
    # the tower uses QuickGELU, from the tag's config (the architecture's says False)
    assert type(ext.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"

    same = create_extractor("clip", model="vqgan-lc-test-tiny", weights="testtag", cache_dir=cache)  # --weights TAG
    assert torch.equal(same(torch.ones(1, 3, 32, 32)), ext(torch.ones(1, 3, 32, 32)))

    with pytest.raises(ExtractorError, match="no pretrained tag 'nope' for 'vqgan-lc-test-tiny'; choose one of: testtag"):
        load_clip("vqgan-lc-test-tiny", pretrained="nope", cache_dir=cache)


def test_clip_by_open_clip_hub_model_name_from_the_cache(tiny_clip_tag: tuple[Path, dict[str, torch.Tensor]],
                                                         offline: None) -> None:
    import json
    import shutil

    from vqgan_lc.extractors import load_clip

    cache, state = tiny_clip_tag
    repo = "testorg/tiny-clip-hub"  # an open_clip Hub model: open_clip_config.json + weights in one repo
    hf_cache_file(cache, repo, "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {**TINY_CLIP, "quick_gelu": True}, "preprocess_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}))
    shutil.copy(hf_cache_file(cache, "testorg/tiny-clip", "open_clip_model.safetensors"),
                hf_cache_file(cache, repo, "open_clip_model.safetensors"))
    ext = load_clip(f"hf-hub:{repo}", cache_dir=cache)
    assert torch.equal(ext.visual.state_dict()["conv1.weight"], state["visual.conv1.weight"])
    assert ext.preprocess.mean == (0.4, 0.4, 0.4) and ext.describe()["model"] == f"hf-hub:{repo}"
    assert ext.describe()["pretrained"] == f"hf-hub:{repo}"
    with pytest.raises(PretrainedNotFoundError, match="open_clip model hf-hub:testorg/missing .* is not in the Hugging "
                                                      "Face cache"):
        load_clip("hf-hub:testorg/missing", cache_dir=cache)


def test_the_papers_clip_name_resolves_to_its_hub_files_and_offline_empty_cache_is_one_sentence(
    tmp_path: Path, offline: None
) -> None:
    from vqgan_lc.extractors import load_clip

    with pytest.raises(PretrainedNotFoundError) as e:
        load_clip("ViT-L-14", pretrained="openai", cache_dir=tmp_path / "empty")
    msg = str(e.value)
    assert msg.startswith("open_clip weights ViT-L-14 / openai (timm/vit_large_patch14_clip_224.openai: "
                          "open_clip_model.safetensors or open_clip_pytorch_model.bin) is not in the Hugging Face cache")
    assert "offline mode is on (--offline)" in msg and "--weights" in msg and "\n" not in msg


def test_build_codebook_cli_extracts_with_a_named_clip(tiny_clip_tag: tuple[Path, dict[str, torch.Tensor]],
                                                       tmp_path: Path, offline: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    from PIL import Image

    from vqgan_lc.cli.main import main
    from vqgan_lc.codebook import FeatureStore

    cache, _ = tiny_clip_tag
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    data = tmp_path / "photos" / "a"
    data.mkdir(parents=True)
    for i, img in enumerate(photo_crops(48, 2, seed=3)):
        Image.fromarray(((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "feats"
    assert main(["build-codebook", "--data", str(tmp_path / "photos"), "--extractor", "clip", "--model",
                 "vqgan-lc-test-tiny", "--pretrained", "testtag", "--features-only", str(out), "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    store = FeatureStore.open(out)
    assert store.num_images == 2 and store.grid == (4, 4) and store.dim == 16


# ----------------------------------------------------------------------------------------- DINOv2: timm and torch.hub
@pytest.mark.slow
def test_dinov2_by_timm_name_and_by_torch_hub_name_from_the_caches(tmp_path: Path, torch_home: Path,
                                                                   offline: None) -> None:
    import timm
    from safetensors.torch import save_file

    from vqgan_lc.extractors import load_dinov2

    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)  # 518 px, timm's layout
    state = {k: v.half().contiguous() for k, v in net.state_dict().items()}
    cache = tmp_path / "hf"
    save_file(state, str(hf_cache_file(cache, "timm/vit_small_patch14_reg4_dinov2.lvd142m", "model.safetensors")))
    torch.save(state, torch_home / "dinov2_vits14_reg4_pretrain.pth")

    by_timm = load_dinov2("vit_small_patch14_reg4_dinov2.lvd142m", cache_dir=cache)
    by_hub = load_dinov2("dinov2_vits14_reg", pretrained=True)
    assert by_timm.describe()["pretrained"] == "timm:vit_small_patch14_reg4_dinov2.lvd142m"
    assert by_hub.describe()["pretrained"] == "torch.hub:dinov2_vits14_reg"
    assert by_hub.describe()["weights"] == "dinov2_vits14_reg4_pretrain.pth"
    w = by_timm.model.state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(w, state["blocks.0.attn.qkv.weight"].float())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a, b = by_timm(x), by_hub(x)
    assert a.shape == (1, 16, 16, 384) and torch.equal(a, b)

    # the DiGIT tokenizer (encode --tokenizer digit --dinov2-model dinov2_vits14_reg, no --weights) takes the same file
    from vqgan_lc.codebook import save_codebook
    from vqgan_lc.digit import DiscriminativeTokenizer

    save_codebook(tmp_path / "km.safetensors", torch.randn(16, 384), {"extractor": "dinov2"})
    tok = DiscriminativeTokenizer.from_files(tmp_path / "km.safetensors", None, model="dinov2_vits14_reg", layer=-1)
    assert tok.spec.weights is not None and Path(tok.spec.weights).name == "dinov2_vits14_reg4_pretrain.pth"
    ids = tok.encode(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert ids.shape == (1, 16, 16) and 0 <= int(ids.min()) and int(ids.max()) < 16

    with pytest.raises(PretrainedNotFoundError, match="timm weights vit_base_patch14_reg4_dinov2.lvd142m .* is not in "
                                                      "the Hugging Face cache"):
        load_dinov2("vit_base_patch14_reg4_dinov2.lvd142m", cache_dir=cache)
    with pytest.raises(PretrainedNotFoundError, match="dinov2_vitb14_reg4_pretrain.pth .* is not in the torch hub cache"):
        load_dinov2("dinov2_vitb14_reg", pretrained=True)


def test_dinov2_without_weights_or_a_name_says_how_to_name_them(tmp_path: Path) -> None:
    from vqgan_lc.codebook import save_codebook
    from vqgan_lc.digit import DiscriminativeTokenizer
    from vqgan_lc.errors import MissingWeightsError
    from vqgan_lc.extractors import load_dinov2

    with pytest.raises(MissingWeightsError, match="--model vit_base_patch14_reg4_dinov2.lvd142m"):
        load_dinov2("vit_base_patch14_reg4_dinov2")
    save_codebook(tmp_path / "km.safetensors", torch.randn(4, 768), {"extractor": "dinov2"})
    with pytest.raises(MissingWeightsError, match="--dinov2-model vit_base_patch14_reg4_dinov2.lvd142m"):
        DiscriminativeTokenizer.from_files(tmp_path / "km.safetensors", None)


def test_an_unreachable_hub_with_an_empty_cache_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from vqgan_lc.extractors import load_clip

    calls: list[str] = []

    def unreachable(*, repo_id: str, filename: str, local_files_only: bool, **kwargs: object) -> str:
        calls.append(filename)  # what the client raises online when the Hub cannot be reached and nothing is cached
        assert not local_files_only
        raise LocalEntryNotFoundError("connection error and no cached file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(PretrainedNotFoundError) as e:
        load_clip("ViT-L-14", pretrained="openai", cache_dir=tmp_path / "empty")
    msg = str(e.value)
    assert calls == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert "is not in the Hugging Face cache" in msg and "could not be reached; retry online" in msg and "\n" not in msg
