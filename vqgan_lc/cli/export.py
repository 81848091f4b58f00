"""``vqgan-lc export``: a training checkpoint (``.ckpt`` of ``vqgan-lc train``) -> a model directory.

    vqgan-lc export runs/tiny_cpu/checkpoints/last.ckpt --out my_model [--inference-only]

Needs no Lightning (``vqgan_lc.export.export_checkpoint``).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="a .ckpt written by vqgan-lc train")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--inference-only", action="store_true", help="keep only the projected N x D' codes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model directory already in --out (other files there are kept)")


def run(args: argparse.Namespace) -> int:
    from .._io import WEIGHTS_DIR_NAMES, prepare_output_dir
    from ..export import export_checkpoint
    from ._checks import check_output

    check_output(args.out, "folder")

    prepare_output_dir(args.out, "model directory", overwrite=args.overwrite, own_names=WEIGHTS_DIR_NAMES, create=False)
    path = export_checkpoint(args.checkpoint, args.out, inference_only=args.inference_only)
    print(path)
    return 0
