"""Moved to ``vqgan_lc.data`` (image listing and loading are shared by train, tokens, metrics and the
codebook builder); this module re-exports it so ``from vqgan_lc.codebook.data import ...`` keeps working."""

from ..data import *  # noqa: F403
from ..data import __all__  # noqa: F401
