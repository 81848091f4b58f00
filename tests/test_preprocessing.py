"""One image preprocessing for the whole package (``vqgan_lc.data.Preprocessing``).

The same photo must become the same pixels in ``encode``, ``evaluate``, training validation and the
codebook builder. Before the rule was shared, a 465 x 348 photo became 85 x 64 before the center crop
in encode/evaluate and 86 x 64 in training validation, so the model was validated on other pixels
than it later encoded.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, write_sample_photos
from PIL import Image

from vqgan_lc.codebook import FeatureStore, extract_features
from vqgan_lc.config import ModelConfig
from vqgan_lc.data import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    PreprocessingError,
    center_crop_offset,
    list_images,
    load_rgb,
    resize_shorter_side,
    to_uint8,
)
from vqgan_lc.extractors import PixelExtractor
from vqgan_lc.metrics import EvaluateOptions, evaluate
from vqgan_lc.model import VQGANLC
from vqgan_lc.registry import get_config
from vqgan_lc.tokens import EncodeOptions, encode_dataset
from vqgan_lc.train.data import ImageDataModule, ImageFolderDataset

SIZE = 64


class RecordingVQGANLC(VQGANLC):
    """The tiny model, keeping a copy of every image batch it is asked to encode."""

    def __init__(self, config: ModelConfig, **kwargs: object) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.seen: list[torch.Tensor] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().cpu().clone())
        return super().encode(images)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two PNGs of chelsea at 465 x 348 (landscape, the audit's example) and 348 x 465 (portrait)."""
    root = tmp_path_factory.mktemp("one-photo")
    img = Image.fromarray(photo("chelsea")).resize((465, 348), Image.BICUBIC)
    img.save(root / "a_landscape.png")
    img.transpose(Image.TRANSPOSE).save(root / "b_portrait.png")
    return root


def torchvision_reference(img: Image.Image, size: int) -> torch.Tensor:
    """torchvision's eval transform (Resize of the shorter side, CenterCrop), then [-1, 1]."""
    from torchvision import transforms

    t = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(HALF, HALF),
    ])
    return t(img)


def test_the_rule_truncates_the_long_side_and_rounds_the_crop_offset(folder: Path) -> None:
    img = load_rgb(folder / "a_landscape.png")
    assert img.size == (465, 348)
    pre = Preprocessing(SIZE)
    assert pre.resize_image(img).size == (85, SIZE)  # int(64 * 465 / 348) = int(85.52); rounding gave 86
    assert pre.resize_image(img.transpose(Image.TRANSPOSE)).size == (SIZE, 85)
    assert resize_shorter_side(img, 348) is img  # already the right size: no resampling
    assert center_crop_offset(85, 64, 64, 64) == (10, 0)  # round(10.5) = 10 (torchvision's rounding)
    assert center_crop_offset(87, 64, 64, 64) == (12, 0)  # round(11.5) = 12
    with pytest.raises(PreprocessingError, match="cannot center-crop"):
        center_crop_offset(63, 64, 64, 64)
    x = pre(img)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # what torchvision's Resize + CenterCrop give, the rule of CLIP's and timm's eval transforms
    assert torch.equal(x, torchvision_reference(img, SIZE))
    # the way back: the cropped pixels exactly
    expect = np.asarray(pre.crop_image(pre.resize_image(img)))
    assert np.array_equal(to_uint8(x).permute(1, 2, 0).numpy(), expect)


def test_preprocessing_is_frozen_serialisable_and_checked() -> None:
    pre = Preprocessing((224, 256), interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    d = pre.to_dict()
    assert d == {"image_size": [224, 256], "resize": "shorter-side", "resize_to": 224, "interpolation": "bilinear",
                 "crop": "center", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                 "orientation": "exif", "alpha": "white"}
    assert Preprocessing.from_dict(d) == pre and hash(Preprocessing.from_dict(d)) == hash(pre)
    assert pickle.loads(pickle.dumps(pre)) == pre
    assert Preprocessing(64) == Preprocessing((64, 64)) and Preprocessing(64).mean == HALF
    with pytest.raises(AttributeError):
        pre.image_size = (1, 1)  # type: ignore[misc]
    with pytest.raises(PreprocessingError, match="resize rule"):
        Preprocessing(64, resize="longer-side")  # type: ignore[arg-type]
    with pytest.raises(PreprocessingError, match="interpolation"):
        Preprocessing(64, interpolation="nearest")  # type: ignore[arg-type]
    with pytest.raises(PreprocessingError, match="image size"):
        Preprocessing(0)
    with pytest.raises(PreprocessingError, match="image_size"):
        Preprocessing.from_dict({"resize": "shorter-side"})


def test_every_path_feeds_the_same_pixels(folder: Path, tmp_path: Path) -> None:
    paths = list_images(folder).paths
    expected = torch.stack([Preprocessing(SIZE)(load_rgb(folder / p)) for p in paths])
    assert expected.shape == (2, 3, SIZE, SIZE)
    assert not torch.equal(expected[0], expected[1].transpose(1, 2))  # the two crops are different pixels

    torch.manual_seed(0)
    model = RecordingVQGANLC.from_config(get_config("tiny"), codebook=torch.randn(512, 768) * 0.03).eval()

    # encode
    encode_dataset(model, folder, tmp_path / "tokens", device="cpu", progress=False,
                   options=EncodeOptions(image_size=SIZE, batch_size=2, num_workers=0))
    assert len(model.seen) == 1 and torch.equal(model.seen[0], expected)

    # evaluate
    model.seen.clear()
    evaluate(model, folder, tmp_path / "eval", device="cpu", progress=False,
             options=EvaluateOptions(image_size=SIZE, batch_size=2, num_workers=0))
    assert len(model.seen) == 1 and torch.equal(model.seen[0], expected)

    # training validation (the data module's loader)
    dm = ImageDataModule(str(folder), image_size=SIZE, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["paths"] == list(paths) and torch.equal(batch["images"], expected)

    # training crops: an S x S window of the same resized image
    resized = Preprocessing(SIZE).resize_image(load_rgb(folder / paths[0]))
    full = Preprocessing(resized.size[::-1]).to_tensor(resized)
    item = ImageFolderDataset(dm.train_images, SIZE, train=True, seed=0)[(0, 0, 0)]["image"]
    windows = [x for x in range(full.shape[2] - SIZE + 1) if torch.equal(full[:, :, x : x + SIZE], item)]
    assert full.shape == (3, SIZE, 85) and len(windows) >= 1

    # codebook builder: one 64 x 64 pixel patch per image is the whole preprocessed image
    store = extract_features(folder, PixelExtractor(patch_size=SIZE, image_size=SIZE), tmp_path / "features",
                             dtype="float32", batch_size=2, progress=False)
    assert isinstance(store, FeatureStore) and store.grid == (1, 1)
    feats = torch.from_numpy(np.array(store.load_shard(0)))  # (2, 1, 1, 64 * 64 * 3), (row, column, channel)
    assert torch.equal(feats.reshape(2, SIZE, SIZE, 3).permute(0, 3, 1, 2), expected)


def test_sample_photos_helper_writes_readable_jpegs(tmp_path: Path) -> None:
    written = write_sample_photos(tmp_path, ("chelsea", "camera"), max_side=128)
    assert [p.name for p in written] == ["chelsea.jpg", "camera.jpg"]
    sizes = [load_rgb(p).size for p in written]
    assert max(sizes[0]) == 128 and sizes[1] == (128, 128)  # camera is 512 x 512 grey -> RGB
    assert load_rgb(written[1]).mode == "RGB"
