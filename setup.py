"""Metadata lives in setup.cfg; this file only declares the optional C search kernel.

The extension is optional: where no C compiler is available the package installs without it and
falls back to the pure-PyTorch blocked search (same results, slower on CPU).
"""

import sys

from setuptools import Extension, setup

extra = [] if sys.platform == "win32" else ["-O3", "-std=c99"]
setup(
    ext_modules=[
        Extension(
            "vqgan_lc.quantize._search",
            sources=["vqgan_lc/quantize/csrc/_search.c"],
            extra_compile_args=extra,
            optional=True,
        )
    ]
)
