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
    "info": ("info", "describe a model, GPT or DiGIT directory, token directory, feature store or codebook file"),
    "build-codebook": ("build_codebook", "extract frozen features and cluster them into a codebook"),
    "evaluate": ("evaluate", "reconstruction metrics, codebook utilization and throughput over a split"),
    "train": ("train", "train or fine-tune a tokenizer with Lightning (--config tiny_cpu, ...)"),
    "export": ("export", "turn a training checkpoint (.ckpt of vqgan-lc train) into a model directory"),
    "train-gpt": ("train_gpt", "train the autoregressive GPT prior on token directories (Lightning)"),
    "sample": ("sample", "sample images: GPT (+ DiGIT stage 2) -> VQGAN-LC decoder -> PNGs"),
    "linear-probe": ("linear_probe", "linear-probe accuracy of a GPT's hidden states on a labelled token directory"),
    "demo": ("demo", "the end-to-end CPU demo: codebook, training, encode, decode, evaluate, report"),
}
# Subcommands that parse their own arguments (LightningCLI; train-gpt's --SECTION.FIELD overrides):
# everything after the name reaches them untouched as ``args.rest``.
OWN_PARSER = {"train", "train-gpt"}


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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    rest: list[str] | None = None
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i < len(argv) and argv[i] in OWN_PARSER:
        argv, rest = argv[: i + 1], argv[i + 1 :]
    args = parser.parse_args(argv)
    if rest is not None:
        args.rest = rest
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
