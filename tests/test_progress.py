"""The one progress helper: counts always, logs a rate line without a bar, closes cleanly."""

from __future__ import annotations

import logging

import pytest

from vqgan_lc.progress import Progress, progress_iter


def test_disabled_progress_only_counts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vqgan_lc.progress"), Progress(10, "x", enabled=False) as bar:
        bar.update(3)
        bar.update(4)
    assert bar.done == 7 and caplog.records == []


def test_log_line_when_no_bar(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: the log fallback
    with caplog.at_level(logging.INFO, logger="vqgan_lc.progress"):
        bar = Progress(5, "encode", enabled=True, log_every=0.0)
        bar.update(2)
        bar.close()
    assert bar.done == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["encode: 2/5 img"]


def test_progress_iter_yields_every_item_in_order() -> None:
    assert list(progress_iter(["a", "b", "c"], "k-means", enabled=False, unit="class")) == ["a", "b", "c"]
    assert list(progress_iter(iter(range(4)), "gen", enabled=True)) == [0, 1, 2, 3]
