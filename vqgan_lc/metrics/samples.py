"""FID and Inception Score of generated samples (``vqgan-lc evaluate-samples``), through torch-fidelity.

DiGIT's ``eval_fid.py`` calls ``torch_fidelity.calculate_metrics`` on a sample folder against 50k
ImageNet-val images (Resize 256 + CenterCrop 256); these are the same torch-fidelity computations
(``inception-v3-compat``: pool features ``2048`` for FID, ``logits_unbiased`` for IS, 10 splits), with
the reference given as an image folder or as precomputed statistics (``.npz`` with ``mu`` and ``sigma``).

Weights: torch-fidelity's Inception (``weights-inception-2015-12-05-6726825d.pth``) from a local path or
from torch-fidelity's cache (``torch.hub.get_dir()/checkpoints``); nothing is downloaded. The file is
checked with ``torch.load(weights_only=True)`` before torch-fidelity (which unpickles it freely) sees it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingWeightsError, SampleEvaluationError

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_EXTRACTOR = "inception-v3-compat"
FID_LAYER = "2048"
ISC_LAYER = "logits_unbiased"
IMAGE_EXTENSIONS = "png,jpg,jpeg"


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights: ``path``, torch-fidelity's cached file, or a standard name (``torch-fidelity``,
    its file name or URL: from, or fetched into, the torch hub cache; ``vqgan_lc.named_weights``)."""
    if path is not None:
        from ..named_weights import resolve_checkpoint

        p = resolve_checkpoint(path, "inception", option="--inception-weights") or Path(path)
        if not p.is_file():
            raise MissingWeightsError(f"Inception weights {p} do not exist; pass torch-fidelity's {INCEPTION_WEIGHTS_NAME}")
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
        if not p.is_file():
            raise MissingWeightsError(f"no Inception weights at {p} (torch-fidelity's cache); pass --inception-weights "
                                      f"with a local copy of {INCEPTION_WEIGHTS_NAME}; nothing is downloaded")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many kinds
        raise MissingWeightsError(f"{p} is not a plain tensor state dict; pass torch-fidelity's {INCEPTION_WEIGHTS_NAME}") from e
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise MissingWeightsError(f"{p} is not torch-fidelity's Inception state dict (no fc.weight)")
    return p


def _count_images(folder: Path) -> int:
    exts = {"." + e for e in IMAGE_EXTENSIONS.split(",")}
    return sum(1 for f in folder.rglob("*") if f.suffix.lower() in exts)


def load_statistics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``mu`` (2048,) and ``sigma`` (2048, 2048) from an ``.npz`` (read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64)}
    except (OSError, ValueError, KeyError) as e:
        raise SampleEvaluationError(f"{path} is not an .npz with 'mu' and 'sigma' arrays; save reference statistics "
                                    "with numpy.savez(path, mu=..., sigma=...)") from e
    n = stats["mu"].shape
    if stats["mu"].ndim != 1 or stats["sigma"].shape != (n[0], n[0]):
        raise SampleEvaluationError(f"{path}: mu must be (d,) and sigma (d, d), got {n} and {stats['sigma'].shape}")
    return stats


class SampleEvaluator:
    """Inception features of image folders and the FID / IS computed from them (torch-fidelity)."""

    def __init__(self, inception_weights: str | os.PathLike | None = None, *, device: str = "cpu",
                 batch_size: int = 64, isc_splits: int = 10) -> None:
        import torch_fidelity.utils as tfu

        self.weights = find_inception_weights(inception_weights)
        self.cuda = torch.device(device).type == "cuda"
        self.kwargs: dict[str, Any] = dict(batch_size=batch_size, cuda=self.cuda, verbose=False, isc_splits=isc_splits,
                                           samples_find_deep=True, samples_find_ext=IMAGE_EXTENSIONS,
                                           save_cpu_ram=False, feature_extractor_weights_path=str(self.weights))
        self.extractor = tfu.create_feature_extractor(FEATURE_EXTRACTOR, [FID_LAYER, ISC_LAYER], cuda=self.cuda,
                                                      feature_extractor_weights_path=str(self.weights), verbose=False)

    def features(self, folder: str | os.PathLike) -> dict[str, torch.Tensor]:
        import torch_fidelity.utils as tfu

        folder = Path(folder)
        if not folder.is_dir() or _count_images(folder) < 2:
            raise SampleEvaluationError(f"{folder} must be a folder with at least 2 images ({IMAGE_EXTENSIONS})")
        return tfu.extract_featuresdict_from_input_id(1, self.extractor, input1=str(folder), **self.kwargs)

    @staticmethod
    def statistics(feats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        from torch_fidelity.metric_fid import fid_featuresdict_to_statistics

        s = fid_featuresdict_to_statistics(feats, FID_LAYER)
        return {"mu": s["mu"].astype(np.float64), "sigma": s["sigma"].astype(np.float64)}

    def inception_score(self, feats: dict[str, torch.Tensor]) -> tuple[float, float]:
        from torch_fidelity.metric_isc import isc_featuresdict_to_metric

        out = isc_featuresdict_to_metric(feats, ISC_LAYER, **self.kwargs)
        return float(out["inception_score_mean"]), float(out["inception_score_std"])

    @staticmethod
    def fid(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        if a["mu"].shape != b["mu"].shape:
            raise SampleEvaluationError(f"statistics of {a['mu'].shape[0]}-d and {b['mu'].shape[0]}-d features cannot be compared")
        return float(fid_statistics_to_metric(a, b, verbose=False)["frechet_inception_distance"])


def evaluate_samples(samples: str | os.PathLike, reference: str | os.PathLike | None = None, *,
                     inception_weights: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64,
                     isc_splits: int = 10, save_reference_stats: str | os.PathLike | None = None) -> dict[str, Any]:
    """FID (against ``reference``: an image folder or an ``.npz`` of ``mu``/``sigma``; skipped when None)
    and Inception Score of the images in ``samples``. Returns the report dict."""
    ev = SampleEvaluator(inception_weights, device=device, batch_size=batch_size, isc_splits=isc_splits)
    feats = ev.features(samples)
    n = int(feats[FID_LAYER].shape[0])
    is_mean, is_std = ev.inception_score(feats)
    report: dict[str, Any] = {"samples": str(samples), "num_samples": n, "inception_score": is_mean,
                              "inception_score_std": is_std, "isc_splits": isc_splits, "feature_extractor": FEATURE_EXTRACTOR,
                              "inception_weights": str(ev.weights), "backend": "torch-fidelity"}
    if reference is not None:
        ref = Path(reference)
        if ref.suffix == ".npz":
            ref_stats = load_statistics(ref)
        else:
            ref_feats = ev.features(ref)
            report["num_reference"] = int(ref_feats[FID_LAYER].shape[0])
            ref_stats = ev.statistics(ref_feats)
            if save_reference_stats is not None:
                np.savez(save_reference_stats, mu=ref_stats["mu"], sigma=ref_stats["sigma"])
        report["reference"] = str(ref)
        report["fid"] = ev.fid(ev.statistics(feats), ref_stats)
    log.info("%d samples: IS %.3f +- %.3f%s", n, is_mean, is_std,
             f", FID {report['fid']:.4f}" if "fid" in report else "")
    return report


def write_sample_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "report.json"
    js.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    rows = [("samples", report["samples"]), ("images", report["num_samples"]),
            ("Inception Score", f"{report['inception_score']:.4f} ± {report['inception_score_std']:.4f}")]
    if "fid" in report:
        rows += [("reference", report["reference"]), ("FID", f"{report['fid']:.4f}")]
    rows += [("backend", f"{report['backend']} ({report['feature_extractor']})")]
    md = out / "report.md"
    md.write_text("# Sample metrics\n\n| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows))
    return js, md
