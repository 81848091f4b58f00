"""``vqgan-lc demo``: the offline end-to-end demo on the bundled photographs (``vqgan_lc.demo``).

    vqgan-lc demo --out runs/demo [--steps 400] [--k 256] [--seed 0]

Needs the ``dev`` extra (scikit-image, faiss, Lightning, matplotlib); about 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import math

from ..errors import ConfigError
from ._args import positive_int, seed

log = logging.getLogger("vqgan_lc.cli.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (the demo's own files in it are replaced)")
    p.add_argument("--steps", type=positive_int, default=400, help="generator steps of training")
    p.add_argument("--k", type=positive_int, default=256, help="codebook size (k-means centres, at least 2)")
    p.add_argument("--seed", type=seed, default=0)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.steps < 1 or args.k < 2:
        raise ConfigError("--steps must be >= 1 and --k >= 2")
    metrics = run_demo(args.out, args.steps, args.k, args.seed)
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        log.error("non-finite metrics: %s", ", ".join(bad))
        return 1
    return 0
