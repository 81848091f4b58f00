"""argparse ``type=`` validators shared by every subcommand: a bad flag value is one sentence, exit status 2.

They import nothing heavy (no torch), so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import re

_DEVICE = re.compile(r"^(cpu|meta|mps|(cuda|xpu|npu|hpu)(:\d+)?)$")


def _number(value: str, kind: type, what: str) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None


def positive_int(value: str) -> int:
    """An integer >= 1 (sizes, counts)."""
    n = int(_number(value, int, "a positive integer"))
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def nonnegative_int(value: str) -> int:
    """An integer >= 0 (worker counts where 0 means 'in this process', off switches)."""
    n = int(_number(value, int, "an integer >= 0"))
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return n


def positive_float(value: str) -> float:
    """A finite number > 0 (learning rates)."""
    x = float(_number(value, float, "a positive number"))
    if not 0.0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def nonnegative_float(value: str) -> float:
    """A finite number >= 0 (temperatures, weights)."""
    x = float(_number(value, float, "a number >= 0"))
    if not 0.0 <= x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return x


def open_fraction(value: str) -> float:
    """A number strictly between 0 and 1."""
    x = float(_number(value, float, "a number between 0 and 1"))
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {value!r}")
    return x


def seed(value: str) -> int:
    """A random seed: an integer in [0, 2**32) (what numpy, faiss and torch all accept)."""
    n = int(_number(value, int, "a seed, an integer >= 0"))
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed, an integer from 0 to {2**32 - 1}, got {value!r}")
    return n


def devices(value: str) -> str:
    """Lightning's ``devices``: ``auto``, ``-1`` (all), a count >= 1, or a comma list of device indices."""
    v = value.strip()
    if v in ("auto", "-1") or (v.isdigit() and int(v) >= 1):
        return v
    parts = [p.strip() for p in v.split(",") if p.strip()]
    if "," in v and parts and all(p.isdigit() for p in parts):
        return v
    raise argparse.ArgumentTypeError(f"expected auto, -1 (all), a device count >= 1 or indices such as 0,1, got {value!r}")


def device(value: str) -> str:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked without importing torch."""
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {value!r}")
    return value


def preset(value: str) -> str:
    """A registered model preset name (``vqgan-lc info --presets`` lists them)."""
    from ..registry import list_models

    names = list_models()
    if value not in names:
        raise argparse.ArgumentTypeError(f"unknown preset {value!r}; choose one of: {', '.join(names)}")
    return value
