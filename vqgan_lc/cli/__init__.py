"""Command-line interface (``vqgan-lc``)."""
