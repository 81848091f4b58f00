"""Facts about the machine that set defaults (imports nothing heavy, so the CLI parsers may use it)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers(cap: int = 4) -> int:
    """DataLoader worker processes by default: ``min(cap, usable cores)``, so a 2-core machine gets 2 and
    no torch warning about more workers than cores."""
    return min(cap, usable_cpus())


__all__ = ["default_num_workers", "usable_cpus"]
