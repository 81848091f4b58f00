"""benchmarks/utilization.py: the pieces its numbers rest on (schedule, codebook rescaling, the no-model
ceiling, utilization counting, the targets) and one tiny end-to-end run of the script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import utilization as U  # noqa: E402


def test_constant_schedule_holds_and_cosine_reaches_zero() -> None:
    steps, warmup, lr = 100, 5, 1e-3
    assert U.lr_at(0, steps, lr, warmup, "constant") == pytest.approx(lr / 5)
    assert U.lr_at(4, steps, lr, warmup, "constant") == pytest.approx(lr)
    assert all(U.lr_at(s, steps, lr, warmup, "constant") == lr for s in range(5, steps))
    # The official half-cycle cosine: 1 right after the warm-up, half-way at the middle, ~0 at the end.
    assert U.lr_at(5, steps, lr, warmup, "cosine") == pytest.approx(lr)
    assert U.lr_at(5 + 95 // 2, steps, lr, warmup, "cosine") == pytest.approx(lr / 2, rel=0.05)
    assert U.lr_at(steps - 1, steps, lr, warmup, "cosine") < lr * 1e-3


def test_rescale_centres_and_scales_without_changing_nearest_centres() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(64, 12, generator=g) * 2 + 5  # far from the origin, std ~0.58
    out = U.rescale(centres, 0.03)
    assert out.mean(0).abs().max() < 1e-6 and float(out.std()) == pytest.approx(0.03, rel=1e-5)
    assert U.rescale(centres, None) is centres
    # An affine map with one scale: every point mapped the same way keeps its nearest centre.
    pts = torch.rand(500, 12, generator=g) * 2 + 5
    scale = 0.03 / (centres - centres.mean(0)).std()
    mapped = (pts - centres.mean(0)) * scale
    assert torch.equal(torch.cdist(pts, centres).argmin(1), torch.cdist(mapped, out).argmin(1))


def test_ceiling_counts_centres_that_are_someones_nearest() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    patches = np.array([[0.1, 0.2], [9.8, 0.1], [0.3, -0.1], [9.9, 0.2]], dtype=np.float32)  # near centres 0, 1
    c = U.ceiling(centres, patches, fractions=(0.25, 0.5, 1.0))
    assert c == {0.25: 0.25, 0.5: 0.5, 1.0: 0.5}


def test_usage_by_token_fraction_and_perplexity() -> None:
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    u = U.usage(ids, 8, fractions=(0.25, 0.5, 1.0))
    assert u["util"] == 0.5 and u["used"] == 4 and u["tokens"] == 8 and u["tokens_per_code"] == 1.0
    assert u["util_by_token_fraction"] == {0.25: 0.125, 0.5: 0.25, 1.0: 0.5}
    assert u["perplexity"] == pytest.approx(4.0)


def test_crops_for_gives_at_least_the_tokens_asked() -> None:
    assert U.crops_for(1024, 64) == 1024  # 64 tokens per crop
    assert U.crops_for(16384, 32) == 8192
    assert U.crops_for(100, 1) * U.GRID**2 >= 100


def test_targets_pass_and_fail_on_the_bounds() -> None:
    def run(kind: str, size: int, util: float) -> dict:
        return {"quantizer": kind, "codebook_size": size, "train_tokens": {"util": util}}

    results = U.check_targets([run("lc", 1024, 0.95), run("vq", 1024, 0.11), run("fc", 1024, 0.5)])
    assert [(t.quantizer, t.codebook_size, ok) for t, _, ok in results] == [("lc", 1024, True), ("vq", 1024, False)]
    assert not U.check_targets([run("lc", 1024, 0.9499)])[0][2]


@pytest.mark.slow
def test_script_runs_end_to_end_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "u.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(ROOT / "benchmarks" / "utilization.py"), "--sizes", "64", "--quantizers", "lc,vq",
           "--steps", "3", "--tokens-per-code", "32", "--curve-crops", "8", "--psnr-crops", "8", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [run["quantizer"] for run in r["runs"]] == ["lc", "vq"]
    for run in r["runs"]:
        assert run["train_tokens"]["tokens"] == 32 * 64 and run["held_out_tokens"]["tokens"] == 32 * 64
        assert 0 < run["train_tokens"]["util"] <= 1 and run["train_tokens"]["used"] <= 64
        assert [s for s, _ in run["curve"]] == [0, 1, 2, 3]
    assert 0 < r["ceilings"]["64"]["train"]["1.0"] <= 1
    assert r["targets"] == []  # no target at N = 64
