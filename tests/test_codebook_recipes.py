"""`build-codebook --recipe digit-official`: DiGIT's k-means data (about 10% of the images, Resize 224 +
RandomCrop 224 + flip fed to DINOv2 at 224, float32), seeded and re-derived here by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DINOV2, TINY_DINOV2_ARCH, write_photo_folder
from PIL import Image

from vqgan_lc.codebook import FeatureStore, extract_features, load_codebook
from vqgan_lc.codebook.recipes import ImageView, RandomCropFlipDataset, subsample_images
from vqgan_lc.data import IMAGENET_MEAN, IMAGENET_STD, ImageList, list_images, load_rgb
from vqgan_lc.errors import ImageSourceError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_dinov2(load_size: int = 224):  # noqa: ANN202
    import timm

    from vqgan_lc.digit import ExtractorSpec, build_dinov2

    torch.manual_seed(0)
    vit = timm.create_model(TINY_DINOV2_ARCH, pretrained=False, img_size=224, num_classes=0, **TINY_DINOV2)
    spec = ExtractorSpec(model=TINY_DINOV2_ARCH, model_kwargs=TINY_DINOV2, load_size=load_size)
    return build_dinov2(spec, vit.state_dict()).eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe") / "photos"
    write_photo_folder(root, per_class=2)
    # a non-square photo, so the random crop has room to move
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(root / "wide.png")
    return root


def test_official_codebook_size_follows_the_encoder() -> None:
    from vqgan_lc.codebook.recipes import digit_kmeans_k

    assert digit_kmeans_k(None) == digit_kmeans_k("vit_base_patch14_reg4_dinov2") == 8192
    assert digit_kmeans_k("vit_large_patch14_reg4_dinov2") == digit_kmeans_k("dinov2_vitl14_reg") == 16384


def test_subsample_is_a_seeded_bernoulli_draw() -> None:
    imgs = ImageList(root=Path("."), paths=tuple(f"{i:05d}.png" for i in range(5000)), labels=(-1,) * 5000)
    a, b = subsample_images(imgs, 0.1, seed=3), subsample_images(imgs, 0.1, seed=3)
    assert a == b and 400 < len(a) < 600  # ~10%, binomial sd 21
    assert subsample_images(imgs, 0.1, seed=4).paths != a.paths
    assert list(a.paths) == sorted(a.paths) and set(a.paths) <= set(imgs.paths)
    assert subsample_images(imgs, 1.0, seed=0) is imgs
    with pytest.raises(ImageSourceError, match="image fraction"):
        subsample_images(imgs, 0.0, seed=0)
    with pytest.raises(ImageSourceError, match="kept none"):
        subsample_images(ImageList(root=Path("."), paths=("a.png",), labels=(-1,)), 1e-9, seed=0)


def _manual_view(path: Path, seed: int, index: int) -> torch.Tensor:
    """torchvision's Resize(224, bicubic) + RandomCrop(224) + RandomHorizontalFlip, by hand with PIL and the
    per-image generator, then ImageNet normalisation."""
    img = load_rgb(path)
    w, h = img.size
    s = 224
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    rng = np.random.default_rng([seed, index])
    x, y = int(rng.integers(0, nw - s + 1)), int(rng.integers(0, nh - s + 1))
    img = img.crop((x, y, x + s, y + s))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_random_crop_flip_view_equals_the_official_transform(photos: Path) -> None:
    ext = _tiny_dinov2()
    imgs = list_images(photos)
    ds = RandomCropFlipDataset(imgs, ext.preprocess, seed=5)
    wide = imgs.paths.index("wide.png")
    for i in range(len(imgs)):
        idx, x, err = ds[i]
        assert idx == i and err is None and x is not None and x.shape == (3, 224, 224)
        torch.testing.assert_close(x, _manual_view(photos / imgs.paths[i], 5, i), atol=1e-6, rtol=0)
    offsets = {float(RandomCropFlipDataset(imgs, ext.preprocess, seed=s)[wide][1].sum()) for s in range(6)}
    assert len(offsets) > 1  # the crop moves with the seed on the 320 x 240 photo
    (photos.parent / "bad").mkdir(exist_ok=True)
    (photos.parent / "bad" / "x.jpg").write_bytes(b"not an image")
    bad = RandomCropFlipDataset(list_images(photos.parent / "bad"), ext.preprocess, seed=0)[0]
    assert bad[1] is None and bad[2] is not None


def test_extract_features_with_the_recipe_view(photos: Path, tmp_path: Path) -> None:
    ext = _tiny_dinov2()
    imgs = subsample_images(list_images(photos), 0.5, seed=2)
    store = extract_features(imgs, ext, tmp_path / "feat", dtype="float32", batch_size=4, progress=False,
                             view=ImageView(random_crop_flip=True, seed=2))
    assert store.options["view"]["view"] == "random-crop-flip" and store.num_images == len(imgs)
    full = list_images(photos)
    with torch.no_grad():
        want = ext(torch.stack([_manual_view(photos / p, 2, i) for i, p in enumerate(imgs.paths)]))
    opened = FeatureStore.open(tmp_path / "feat")
    got = torch.from_numpy(np.concatenate([opened.load_shard(i) for i in range(opened.num_shards)]).astype(np.float32))
    torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)
    assert len(full) > len(imgs)
    # the default view keeps the store options of before (no "view" entry)
    plain = extract_features(imgs, ext, tmp_path / "plain", batch_size=4, progress=False)
    assert "view" not in plain.options


def test_cli_recipe_digit_official(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss")
    import vqgan_lc.extractors as extractors
    from vqgan_lc.cli.main import main

    seen: dict[str, object] = {}

    def fake_create(kind: str, **kw: object):  # noqa: ANN202 - the tiny DINOv2 instead of a weights file
        seen.update(kind=kind, **kw)
        return _tiny_dinov2(int(kw["image_size"]))  # type: ignore[arg-type]

    monkeypatch.setattr(extractors, "create_extractor", fake_create)
    out = tmp_path / "km.safetensors"
    args = ["build-codebook", "--recipe", "digit-official", "--data", str(photos), "--weights", "unused.pth",
            "--k", "8", "--image-fraction", "0.6", "--seed", "1", "--workers", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert seen["kind"] == "dinov2" and seen["image_size"] == 224
    cb = load_codebook(out)
    p = cb.provenance
    assert cb.vectors.shape == (8, 48) and p["feature_dtype"] == "float32" and p["image_size"] == [224, 224]
    assert p["view"] == {"view": "random-crop-flip", "seed": 1, "recipe": "digit-official", "image_fraction": 0.6}
    split = tmp_path / "split.safetensors"  # clustering the same store again records the same view
    assert main(["build-codebook", "--from-features", str(tmp_path / "km.features"), "--k", "8", "--seed", "1",
                 "--no-progress", "--out", str(split)]) == 0
    assert load_codebook(split).provenance == p
    kept = subsample_images(list_images(photos), 0.6, seed=1)
    assert 0 < len(kept) < len(list_images(photos))
    assert FeatureStore.open(tmp_path / "km.features").num_images == len(kept)
    # same seed, same codebook
    out2 = tmp_path / "km2.safetensors"
    assert main([*args[:-1], str(out2)]) == 0
    torch.testing.assert_close(load_codebook(out2).vectors, cb.vectors)
    assert main(["build-codebook", "--recipe", "digit-official", "--data", str(photos), "--extractor", "clip",
                 "--out", str(tmp_path / "x.safetensors")]) != 0
    assert "clusters DINOv2 features" in capsys.readouterr().err
    assert main(["build-codebook", "--recipe", "digit-official", "--data", str(photos), "--pool", "2",
                 "--out", str(tmp_path / "x.safetensors")]) != 0
    assert "drop --image-size, --pool and --per-class" in capsys.readouterr().err
