"""benchmarks/gpu.py: every code path runs on the CPU (--dry-run-cpu) and the JSON has every section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_dry_run_cpu_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run-cpu", "--json", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["benchmark"] == "gpu" and r["dry_run_cpu"] is True and r["device"] == "cpu"
    assert {"machine", "settings", "encode", "search", "train_step", "scaling"} <= set(r)

    enc = {row["variant"]: row for row in r["encode"]}
    assert list(enc) == ["fp32", "bf16", "channels_last", "bf16+channels_last", "compile"]
    for row in enc.values():
        assert "error" not in row, row
        assert row["images_per_s"] > 0 and 0 <= row["ids_equal_fp32"] <= 1
    assert enc["fp32"]["vs_fp32"] == 1.0 and enc["fp32"]["ids_equal_fp32"] == 1.0
    assert enc["channels_last"]["ids_equal_fp32"] >= 0.9  # same arithmetic, another memory layout

    search = {row["method"]: row for row in r["search"]}
    assert {"official", "nearest_code", "faiss-cpu"} <= set(search)
    assert search["official"]["speedup_vs_official"] == 1.0
    assert search["nearest_code"]["ids_equal_official"] == 1.0  # random Gaussian data: no ties

    steps = {row["precision"]: row for row in r["train_step"]}
    assert set(steps) == {"fp32", "bf16"} and all(s["step_ms"] > 0 and s["loss"] > 0 for s in steps.values())

    assert [row["devices"] for row in r["scaling"]] == [1, 2] and r["scaling"][0]["vs_one"] == 1.0
    for header in ("encode: tiny @ 32px", "nearest-code search: N=128", "training step", "encode scaling"):
        assert header in proc.stdout, header


def test_without_cuda_exits_zero_with_one_line(tmp_path: Path) -> None:
    env = _env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # hides any GPU, so this runs the same everywhere
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA device" in proc.stdout
    assert not out.exists()
