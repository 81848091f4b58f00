"""Moved to ``vqgan_lc.data`` (image listing and loading are shared by train, tokens, metrics and the
codebook builder); this module re-exports it so ``from vqgan_lc.codebook.data import ...`` keeps working."""

from ..data import (
    IMAGE_EXTENSIONS,
    UNLABELLED,
    Batch,
    ImageDataset,
    ImageList,
    ImageSourceError,
    collate,
    draft_size,
    list_images,
    load_rgb,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "Batch",
    "ImageDataset",
    "ImageList",
    "ImageSourceError",
    "collate",
    "draft_size",
    "list_images",
    "load_rgb",
]
