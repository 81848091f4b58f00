"""The ``vqgan-lc`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their subcommand runs, so ``vqgan-lc convert`` needs no Lightning or faiss.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import VQGANLCError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "turn an official VQGAN-LC or MAGE VQGAN checkpoint into a model directory"),
    "encode": ("encode", "encode an image folder into a token directory (resumable, sharded, multi-device)"),
    "decode": ("decode", "decode a token directory back to PNG images"),
    "export-tokens": ("export_tokens", "export a token directory to LlamaGen .npy, a flat memmap, Parquet or a HF dataset"),
    "info": ("info", "describe a model, GPT or DiGIT directory, token directory, feature store or codebook file"),
    "build-codebook": ("build_codebook", "extract frozen features and cluster them into a codebook"),
    "evaluate": ("evaluate", "reconstruction metrics, codebook utilization and throughput over a split"),
    "train": ("train", "train or fine-tune a tokenizer with PyTorch Lightning"),
    "train-gpt": ("train_gpt", "train the autoregressive GPT prior on token directories (Lightning)"),
    "sample": ("sample", "sample images: GPT (+ DiGIT stage 2) -> VQGAN-LC decoder -> PNGs"),
    "linear-probe": ("linear_probe", "linear-probe accuracy of a GPT's hidden states on a labelled token directory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgan-lc", description="Large-codebook image tokenizers (VQGAN-LC).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        _load(module).add_arguments(p)
    return parser


def _load(module: str):  # noqa: ANN202
    return importlib.import_module(f"{__package__}.{module}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(_load(args._module).run(args) or 0)
    except VQGANLCError as e:
        print(f"vqgan-lc {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
