"""Named k-means data recipes for ``build-codebook``: which images are clustered, and in which view.

* ``default``: every image of ``--data`` / ``--file-list`` in the extractor's own view (DINOv2: resize
  256 + center crop 256, bicubic to 224 inside; the tokenization view), features stored as float16.
* ``digit-official``: the data of DiGIT's released k-means (``preprocess/dump_features.py``,
  ``preprocess/data_handler.py``; audit T9): each image is kept with probability 0.1 (``fraction``), is
  resized (shorter side 224, bicubic), randomly cropped to 224 x 224 and flipped with probability 1/2,
  then fed to DINOv2 at 224 px without a further resize; features are stored as float32. The
  official code draws the subset and the views from unseeded global RNGs; here both come from the
  seed (``np.random.default_rng([seed, index])`` per image), so a rebuild is identical. The
  clustering itself is the package's (faiss, 20 iterations, at most 256 x K sampled vectors), as
  DiGIT's (faiss ``Kmeans(d, 8192, niter=20)``; 16384 centres for ViT-L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..data import ImageDataset, Preprocessing
from ..errors import ImageSourceError
from ..sources import ImageSource

CodebookRecipe = Literal["default", "digit-official"]
CODEBOOK_RECIPES: tuple[str, ...] = ("default", "digit-official")

DIGIT_KMEANS_FRACTION = 0.1  # dump_features.py: `if random.random() > 0.1: continue`
DIGIT_KMEANS_VIEW_SIZE = 224  # data_handler.py: Resize(224, bicubic) + RandomCrop(224) + RandomHorizontalFlip
DIGIT_KMEANS_K = 8192  # preprocess/run.sh (ViT-B)
DIGIT_KMEANS_K_LARGE = 16384  # README: km_16k.npy for ViT-L


def digit_kmeans_k(model: str | None) -> int:
    """DiGIT's codebook size for a DINOv2 name: 16384 for ViT-L (``vit_large_*``, ``dinov2_vitl14*``), else 8192."""
    name = (model or "").lower()
    return DIGIT_KMEANS_K_LARGE if "large" in name or "vitl" in name else DIGIT_KMEANS_K


@dataclass(frozen=True)
class RecipeSettings:
    """What a recipe fixes: the image fraction, the extractor's load size (None: its default), the random
    crop + flip view, the stored dtype and the default codebook size (None: ``--k`` is required)."""

    fraction: float
    image_size: int | None
    random_view: bool
    dtype: Literal["float16", "float32"]
    k: int | None


RECIPES: dict[str, RecipeSettings] = {
    "default": RecipeSettings(fraction=1.0, image_size=None, random_view=False, dtype="float16", k=None),
    "digit-official": RecipeSettings(fraction=DIGIT_KMEANS_FRACTION, image_size=DIGIT_KMEANS_VIEW_SIZE,
                                     random_view=True, dtype="float32", k=DIGIT_KMEANS_K),
}


def subsample_images(images: ImageSource, fraction: float, seed: int) -> ImageSource:
    """Keep each image with probability ``fraction`` (one seeded Bernoulli draw per image, in list order);
    ``fraction = 1`` keeps the list as it is. Raises ``ImageSourceError`` when no image is kept."""
    if not 0.0 < fraction <= 1.0:
        raise ImageSourceError(f"the image fraction must be in (0, 1], got {fraction}; pass e.g. --image-fraction 0.1")
    if fraction >= 1.0:
        return images
    keep = np.flatnonzero(np.random.default_rng([seed, 0x6B6D]).random(len(images)) < fraction)
    if not len(keep):
        raise ImageSourceError(f"a fraction of {fraction} of {len(images)} images kept none; raise --image-fraction "
                               "or give more images")
    return images.subset([int(i) for i in keep])


class RandomCropFlipDataset(ImageDataset):
    """``ImageDataset`` whose view is a seeded random crop + horizontal flip instead of the center crop.

    Each image is resized by ``preprocess.resize_image`` (shorter side to the crop size), cropped at an
    offset drawn uniformly from every valid one and flipped with probability 1/2, both from
    ``np.random.default_rng([seed, index])``, then normalised by ``preprocess.to_tensor``. Returns what
    ``ImageDataset`` returns: ``(index, (3, S, S) tensor or None, error or None)``.
    """

    def __init__(self, images: ImageSource, preprocess: Preprocessing, seed: int) -> None:
        super().__init__(images, preprocess)
        self.preprocess, self.seed = preprocess, seed

    def view(self, img: Image.Image, index: int) -> torch.Tensor:
        pre = self.preprocess
        img = pre.resize_image(img)
        h, w = pre.image_size
        rng = np.random.default_rng([self.seed, index])
        x, y = int(rng.integers(0, img.size[0] - w + 1)), int(rng.integers(0, img.size[1] - h + 1))
        img = img.crop((x, y, x + w, y + h))
        if bool(rng.random() < 0.5):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pre.to_tensor(img)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = self.images.load(i, self.draft)
        except Exception as e:  # noqa: BLE001 - as ImageDataset: an unreadable file is skipped, not fatal
            return i, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable image'}"
        return i, self.view(img, i), None


@dataclass(frozen=True)
class ImageView:
    """How ``extract_features`` shows each image to the extractor: ``random_crop_flip`` seeded by ``seed``
    (the ``digit-official`` recipe), or the extractor's own center-crop view. ``recipe`` and
    ``image_fraction`` only record how the image list was chosen (``subsample_images``)."""

    random_crop_flip: bool = False
    seed: int = 0
    recipe: str = "default"
    image_fraction: float = 1.0

    @property
    def is_default(self) -> bool:
        """The extractor's own view of every image: nothing to record (stores made before still resume)."""
        return not self.random_crop_flip and self.recipe == "default" and self.image_fraction >= 1.0

    def dataset(self, images: ImageSource, preprocess: Preprocessing) -> ImageDataset:
        if self.random_crop_flip:
            return RandomCropFlipDataset(images, preprocess, self.seed)
        return ImageDataset(images, preprocess)

    def describe(self) -> dict[str, Any]:
        """Recorded in the feature store's options (another view needs another store)."""
        return {"view": "random-crop-flip" if self.random_crop_flip else "center", "seed": self.seed,
                "recipe": self.recipe, "image_fraction": self.image_fraction}


__all__ = [
    "CODEBOOK_RECIPES",
    "DIGIT_KMEANS_FRACTION",
    "DIGIT_KMEANS_K",
    "DIGIT_KMEANS_K_LARGE",
    "DIGIT_KMEANS_VIEW_SIZE",
    "RECIPES",
    "CodebookRecipe",
    "ImageView",
    "RandomCropFlipDataset",
    "RecipeSettings",
    "digit_kmeans_k",
    "subsample_images",
]
