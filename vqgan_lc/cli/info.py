"""``vqgan-lc info``: what a model directory or codebook file holds, or the list of presets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="a model directory or a codebook file")
    p.add_argument("--presets", action="store_true", help="list the named model presets")


def run(args: argparse.Namespace) -> int:
    from .. import get_config, list_models

    if args.presets or not args.path:
        for name in list_models():
            c = get_config(name)
            print(f"{name:20s} f{c.downsample_factor:<3d} D'={c.embed_dim:<3d} codebook {c.quantizer.codebook_size} x "
                  f"{c.quantizer.codebook_dim}  ch={c.ch} ch_mult={list(c.ch_mult)} {c.resolution}px")
        return 0
    path = Path(args.path)
    if path.is_dir() and (path / "manifest.json").is_file():
        from ..tokens import read_manifest

        m = read_manifest(path)
        info = {k: m[k] for k in ("tokenizer", "grid", "dtype", "num_rows", "num_skipped", "preprocessing")}
        info["shards"] = len(m["shards"])
    elif path.is_dir():
        from ..model import VQGANLC

        model = VQGANLC.from_pretrained(path)
        info = {"config": model.config.to_dict(), "config_hash": model.config_hash(),
                "inference_only": model.inference_only, "provenance": getattr(model, "provenance", {}),
                "parameters": sum(p.numel() for p in model.parameters())}
    else:
        from ..codebook import load_codebook

        cb = load_codebook(path)
        info = {"codebook": list(cb.vectors.shape), "provenance": cb.provenance}
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0
