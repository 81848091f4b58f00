"""Codebook building: frozen feature extractors, a feature store, k-means, and codebook files.

Heavy dependencies (faiss, open_clip, timm) are imported only when the functions that need them run.
"""

from ..data import ImageList, ImageSourceError, list_images
from .build import build_codebook, codebook_from_features, default_features_dir, extract_features
from .features import (
    ClipExtractor,
    DINOv2Extractor,
    ExtractorError,
    FeatureExtractor,
    ModuleExtractor,
    PixelExtractor,
    Preprocess,
    as_extractor,
    create_extractor,
    load_clip,
    load_dinov2,
    pool_features,
)
from .io import Codebook, load_codebook, save_codebook
from .kmeans import (
    InsufficientMemoryError,
    KMeansResult,
    PerClassResult,
    estimate_kmeans_bytes,
    kmeans,
    kmeans_per_class,
)
from .store import FeatureStore, FeatureStoreError

__all__ = [
    "ClipExtractor",
    "Codebook",
    "DINOv2Extractor",
    "ExtractorError",
    "FeatureExtractor",
    "FeatureStore",
    "FeatureStoreError",
    "ImageList",
    "ImageSourceError",
    "InsufficientMemoryError",
    "KMeansResult",
    "ModuleExtractor",
    "PerClassResult",
    "PixelExtractor",
    "Preprocess",
    "as_extractor",
    "build_codebook",
    "codebook_from_features",
    "create_extractor",
    "default_features_dir",
    "estimate_kmeans_bytes",
    "extract_features",
    "kmeans",
    "kmeans_per_class",
    "list_images",
    "load_clip",
    "load_codebook",
    "load_dinov2",
    "pool_features",
    "save_codebook",
]
