"""``vqgan-lc evaluate-samples``: FID and Inception Score of a folder of generated images.

    vqgan-lc evaluate-samples --samples samples/ --reference imagenet-val-256/ \
        --inception-weights weights-inception-2015-12-05-6726825d.pth --out eval/

``--reference`` is an image folder (DiGIT: 50k ImageNet-val images, Resize 256 + CenterCrop 256) or an
``.npz`` with ``mu``/``sigma``; computed with torch-fidelity as DiGIT's ``eval_fid.py``. Writes
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import logging

from ._args import device, positive_int
from ._checks import check_device, check_output

log = logging.getLogger("vqgan_lc.cli.evaluate_samples")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="folder of generated images (png/jpg, searched recursively)")
    p.add_argument("--reference", help="reference image folder or .npz with mu and sigma (omit for IS only)")
    p.add_argument("--inception-weights", help="local torch-fidelity Inception weights (default: torch-fidelity's "
                                               "cache under torch.hub.get_dir()/checkpoints; never downloaded)")
    p.add_argument("--save-reference-stats", help="write the reference folder's mu/sigma to this .npz for reuse")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--isc-splits", type=positive_int, default=10, help="Inception Score splits (torch-fidelity default 10)")
    p.add_argument("--device", type=device, default=None, help="torch device (default: cuda when available)")
    p.add_argument("--out", required=True, help="directory for report.json and report.md")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    from ..metrics.samples import evaluate_samples, write_sample_report

    check_output(args.out, "folder")
    check_device(args.device)
    report = evaluate_samples(args.samples, args.reference, inception_weights=args.inception_weights,
                              device=args.device or ("cuda" if _cuda() else "cpu"), batch_size=args.batch_size, isc_splits=args.isc_splits,
                              save_reference_stats=args.save_reference_stats)
    js, md = write_sample_report(report, args.out)
    log.info("wrote %s and %s", js, md)
    return 0
