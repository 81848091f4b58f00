"""Codebook building: a feature store, k-means, and codebook files (the extractors whose features are
clustered live in ``vqgan_lc.extractors``, the image sources in ``vqgan_lc.data``).

Heavy dependencies (faiss) are imported only when the functions that need them run.
"""

from .build import build_codebook, codebook_from_features, default_features_dir, extract_features
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
    "Codebook",
    "FeatureStore",
    "FeatureStoreError",
    "InsufficientMemoryError",
    "KMeansResult",
    "PerClassResult",
    "build_codebook",
    "codebook_from_features",
    "default_features_dir",
    "estimate_kmeans_bytes",
    "extract_features",
    "kmeans",
    "kmeans_per_class",
    "load_codebook",
    "save_codebook",
]
