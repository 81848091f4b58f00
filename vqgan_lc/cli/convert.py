"""``vqgan-lc convert``: official release checkpoint -> model directory."""

from __future__ import annotations

import argparse

from ._args import positive_int, preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="official .pth, e.g. vqgan-lc-100K-f16-dim8.pth")
    p.add_argument("--codebook", help="the k-means codebook it was trained with, e.g. codebook-100K.pth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="official vq_config.yaml (model.params.ddconfig)")
    g.add_argument("--preset", type=preset, help="a preset name, e.g. vqgan-lc-f16-100k (see `vqgan-lc info --presets`)")
    p.add_argument("--embed-dim", type=positive_int, help="D' (default: the checkpoint's args.embed_dim)")
    p.add_argument("--inference-only", action="store_true",
                   help="store only the projected N x D' codes (3.2 MB at 100k) instead of the raw codebook")
    p.add_argument("--out", required=True, help="output model directory")


def run(args: argparse.Namespace) -> int:
    from ..convert import convert_official

    model = convert_official(
        args.checkpoint, codebook=args.codebook, yaml_config=args.config, preset=args.preset, embed_dim=args.embed_dim
    )
    model.save_pretrained(args.out, inference_only=args.inference_only)
    c = model.config
    print(f"wrote {args.out}: f{c.downsample_factor}, D'={c.embed_dim}, codebook {c.quantizer.codebook_size} x "
          f"{c.quantizer.codebook_dim}{' (inference-only)' if args.inference_only else ''}")
    return 0
