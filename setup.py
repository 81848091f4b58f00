"""Metadata lives in setup.cfg; this file only declares the optional C search kernel.

The extension is optional: where no C compiler is available the package installs without it and
falls back to the pure-PyTorch blocked search (same results, slower on CPU). A failed build is not
silent: it warns with the compiler's error, and under ``CI=true`` the test suite fails
(``tests/test_search.py``) instead of skipping the kernel's tests.
"""

import sys
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExtWarnOnFailure(build_ext):
    """Builds the optional kernel; when the compiler fails, says so loudly and installs without it."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler/linker failure: the kernel is optional
            compiler = getattr(getattr(self, "compiler", None), "compiler_so", None) or "the C compiler"
            msg = (
                f"vqgan-lc: the C search kernel {ext.name} was NOT built ({type(exc).__name__}: {exc}; "
                f"compiler: {' '.join(compiler) if isinstance(compiler, list) else compiler}). The package "
                "works without it (CPU search falls back to PyTorch, slower); install a C compiler "
                "(gcc or clang) and reinstall to build it."
            )
            warnings.warn(msg, stacklevel=1)
            print(f"WARNING: {msg}", file=sys.stderr)


extra = [] if sys.platform == "win32" else ["-O3", "-std=c99"]
setup(
    ext_modules=[
        Extension(
            "vqgan_lc.quantize._search",
            sources=["vqgan_lc/quantize/csrc/_search.c"],
            extra_compile_args=extra,
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExtWarnOnFailure},
)
