"""``vqgan-lc export-tokens``: a token directory -> LlamaGen .npy files, a flat memmap, Parquet or a HF dataset."""

from __future__ import annotations

import argparse

from ._args import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tokens.export import EXPORT_TARGETS

    p.add_argument("--tokens", required=True, help="token directory written by `vqgan-lc encode`")
    p.add_argument("--to", required=True, choices=EXPORT_TARGETS,
                   help="llamagen: codes/{i}.npy + labels/{i}.npy; memmap: one flat tokens.bin + meta.json "
                        "(nanoGPT); parquet: tokens.parquet with the manifest as metadata; hf: a `datasets` "
                        "save_to_disk folder")
    p.add_argument("--out", required=True, help="output folder (must be absent or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--eos", action="store_true",
                   help="memmap only: append an EOS id (= codebook size) after every row")
    p.add_argument("--llamagen-prefix", metavar="NAME",
                   help="llamagen only: name the folders NAME_codes / NAME_labels (e.g. imagenet256, what "
                        "LlamaGen's build_imagenet_code expects) instead of codes / labels")
    p.add_argument("--no-verify", action="store_true", help="skip the shards' sha256 check")
    p.add_argument("--chunk-rows", type=positive_int, default=4096, help="rows read from the token directory at a time")


def run(args: argparse.Namespace) -> int:
    from ..errors import ExportError
    from ..tokens.export import export_tokens
    from ._checks import check_output

    check_output(args.out, "folder")
    if args.eos and args.to != "memmap":
        raise ExportError("--eos applies to --to memmap only; drop it or export to memmap")
    if args.llamagen_prefix and args.to != "llamagen":
        raise ExportError("--llamagen-prefix applies to --to llamagen only; drop it or export to llamagen")
    out = export_tokens(args.tokens, args.out, args.to, overwrite=args.overwrite, verify=not args.no_verify,
                        chunk_rows=args.chunk_rows, eos=args.eos, llamagen_prefix=args.llamagen_prefix)
    print(f"exported {args.tokens} to {out} ({args.to})")
    return 0
