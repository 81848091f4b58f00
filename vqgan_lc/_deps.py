"""Optional dependencies: check them before any work starts, and name the pip extra that installs them.

``require("faiss", extra="codebook")`` returns the imported module or raises
:class:`~vqgan_lc.errors.MissingDependencyError` whose sentence says ``pip install "vqgan-lc[codebook]"``.
``is_available`` only looks the module up (no import), for checks that must stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a parent package may be imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` naming ``vqgan-lc[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # Only a missing ``module`` itself (or its parent package) is a missing dependency; an ImportError
        # raised inside an installed package is a broken install and is re-raised as is.
        missing = getattr(e, "name", None)
        if missing is not None and not (module == missing or module.startswith(missing + ".")):
            raise
        raise MissingDependencyError(module, extra, purpose) from e
