"""Codebook building: frozen feature extractors, a feature store, k-means, and codebook files."""

from .io import Codebook, load_codebook, save_codebook

__all__ = ["Codebook", "load_codebook", "save_codebook"]
