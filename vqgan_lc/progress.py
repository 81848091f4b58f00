"""The one progress display of the package (encode, evaluate, feature extraction, per-class k-means).

``Progress(total, desc, enabled=..., unit=...)``: a tqdm bar on stderr when enabled and tqdm is
installed (it is a declared dependency, but the display never makes it required); otherwise, when
enabled, a log line with the rate every ``log_every`` seconds. Disabled, it only counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Progress:
    """``update(n)`` after each step, ``close()`` at the end (or use it as a context manager)."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool = True, unit: str = "img",
                 log_every: float = 5.0) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done = 0
        self.log_every = log_every
        self._t0 = self._last = time.perf_counter()
        self._bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is declared; a stripped install logs instead
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished items."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self.log_every:
            self._last = time.perf_counter()
            rate = self.done / max(self._last - self._t0, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            log.info("%s: %d%s %s (%.1f %s/s)", self.desc, self.done, of, self.unit, rate, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def progress_iter(items: Iterable[T], desc: str, *, total: int | None = None, enabled: bool = True,
                  unit: str = "item") -> Iterator[T]:
    """Yield ``items``, counting each in a ``Progress``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, enabled=enabled, unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)


__all__ = ["Progress", "progress_iter"]
