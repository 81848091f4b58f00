"""The package version, in a module of its own so that library code (e.g. the codebook builder's
provenance) and ``setup.cfg`` read it without importing the package face ``vqgan_lc/__init__.py``."""

__version__ = "0.1.0"
