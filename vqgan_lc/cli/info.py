"""``vqgan-lc info``: what a path holds, or the list of presets.

The path is recognised through the format table of ``vqgan_lc.formats`` (by the ``format`` name it
records, never by file names) and described by its format's own module. Prints a title line and one
``key: value`` line per size (``--json``: one JSON object with the full config and provenance as
well). A path of no known format, or of a format version this vqgan-lc does not read, stops with one
sentence saying so (exit status 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..formats import NONE_OF_THEM, describe

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help=f"{NONE_OF_THEM[0].upper()}{NONE_OF_THEM[1:]}")
    p.add_argument("--presets", action="store_true", help="list the named model presets")
    p.add_argument("--json", action="store_true", help="print one JSON object (with the full config and provenance)")


def run(args: argparse.Namespace) -> int:
    if args.presets or not args.path:
        from ..registry import get_config, list_models

        for name in list_models():
            c = get_config(name)
            print(f"{name:20s} f{c.downsample_factor:<3d} D'={c.embed_dim:<3d} codebook {c.quantizer.codebook_size} x "
                  f"{c.quantizer.codebook_dim}  ch={c.ch} ch_mult={list(c.ch_mult)} {c.resolution}px")
        return 0
    path = Path(args.path)
    d = describe(path)
    print(json.dumps(d.to_json(path), indent=2, sort_keys=True) if args.json else d.to_text(path))
    return 0
