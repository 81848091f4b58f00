"""`vqgan-lc evaluate-samples`: torch-fidelity FID / IS with a random-weight Inception saved locally
(never a download)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.errors import MissingWeightsError, SampleEvaluationError

tf = pytest.importorskip("torch_fidelity")

from vqgan_lc.metrics.samples import (  # noqa: E402
    INCEPTION_WEIGHTS_NAME,
    SampleEvaluator,
    evaluate_samples,
    find_inception_weights,
    load_statistics,
)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's Inception architecture with random weights, as a local file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    orig_load, orig_url = cls.load_state_dict, fe.load_state_dict_from_url
    cls.load_state_dict = lambda self, sd: None  # type: ignore[method-assign,assignment,return-value]
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = orig_load, orig_url
    for m in net.modules():  # He init keeps the signal alive through ~90 random conv layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path


def _folder(root: Path, name: str, n: int, seed: int, *, smooth: bool) -> Path:
    d = root / name
    d.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        if smooth:
            img = np.broadcast_to(rng.integers(0, 256, (1, 1, 3)), (32, 32, 3)).astype(np.uint8)
        else:
            img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(img)).save(d / f"{i:03d}.png")
    return d


@pytest.mark.slow
def test_fid_is_against_folder_and_npz_and_cli(tmp_path: Path, inception_weights: Path) -> None:
    a = _folder(tmp_path, "a", 4, 0, smooth=False)
    b = _folder(tmp_path, "b", 4, 1, smooth=True)
    stats = tmp_path / "b_stats.npz"
    r_ab = evaluate_samples(a, b, inception_weights=inception_weights, isc_splits=2, save_reference_stats=stats)
    assert r_ab["num_samples"] == 4 and r_ab["num_reference"] == 4
    assert r_ab["fid"] > 1e-3  # noise vs flat colours
    assert r_ab["inception_score"] >= 1.0 - 1e-6  # exp(KL) >= 1
    ev = SampleEvaluator(inception_weights, isc_splits=2)
    fa, fb = ev.statistics(ev.features(a)), load_statistics(stats)
    assert abs(ev.fid(fa, fa)) < 1e-6 * max(1.0, r_ab["fid"])  # a set against itself
    assert ev.fid(fa, fb) == pytest.approx(r_ab["fid"], rel=1e-9, abs=1e-9)  # .npz == folder reference
    # the torch-fidelity FID equals the closed form on the same features
    from scipy import linalg

    covmean = linalg.sqrtm(fa["sigma"] @ fb["sigma"]).real
    want = float(((fa["mu"] - fb["mu"]) ** 2).sum() + np.trace(fa["sigma"] + fb["sigma"] - 2 * covmean))
    assert r_ab["fid"] == pytest.approx(want, rel=1e-3, abs=1e-3)

    out = tmp_path / "eval"
    res = subprocess.run([sys.executable, "-m", "vqgan_lc.cli.main", "evaluate-samples", "--samples", str(a),
                          "--reference", str(stats), "--inception-weights", str(inception_weights),
                          "--isc-splits", "2", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["fid"] == pytest.approx(r_ab["fid"], rel=1e-6)
    assert "FID" in (out / "report.md").read_text()


def test_weights_from_cache_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inception_weights: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="nothing is downloaded"):
        find_inception_weights()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    cached = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_NAME
    cached.write_bytes(inception_weights.read_bytes())
    assert find_inception_weights() == cached
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(MissingWeightsError, match="fc.weight"):
        find_inception_weights(bad)


def test_bad_statistics_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(SampleEvaluationError, match="mu must be"):
        load_statistics(tmp_path / "s.npz")
    np.savez(tmp_path / "t.npz", m=np.zeros(3))
    with pytest.raises(SampleEvaluationError, match="'mu' and 'sigma'"):
        load_statistics(tmp_path / "t.npz")


def test_digit_stage1_top_k_defaults_follow_the_official_scripts() -> None:
    from vqgan_lc.generate.gpt import gpt_config
    from vqgan_lc.generate.pipeline import digit_stage1_top_k

    base = gpt_config("gpt-digit-stage1-base")
    assert digit_stage1_top_k(base) == 200
    assert digit_stage1_top_k(base.replace(n_classes=1000, null_class=False)) == 300
    assert digit_stage1_top_k(base.replace(n_codes=16384, n_embd=1536)) == 400
