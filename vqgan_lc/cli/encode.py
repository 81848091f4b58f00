"""``vqgan-lc encode``: an image folder or file list -> a token directory."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (save_pretrained / convert output)")
    p.add_argument("--data", required=True, help="image folder (recursive; classes = first-level sub-folders)")
    p.add_argument("--file-list", help="text file of 'relative/path[,label]' lines under --data (instead of a walk)")
    p.add_argument("--out", required=True, help="token directory to write (resumable)")
    p.add_argument("--image-size", type=int, help="short side resized then center-cropped (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--devices", type=int, default=1, help="processes, one per GPU (or sharing the CPU cores)")
    p.add_argument("--shard-size", type=int, default=4096, help="source images per shard")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="an unreadable image is skipped and recorded (skip) or stops the run (fail)")
    p.add_argument("--overwrite", action="store_true", help="replace tokens made with another model or options")
    p.add_argument("--device", help="torch device for a single-process run (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model import VQGANLC
    from ..tokens import EncodeOptions, encode_dataset

    model = VQGANLC.from_pretrained(args.model)
    opts = EncodeOptions(
        image_size=args.image_size or model.config.resolution, batch_size=args.batch_size,
        num_workers=args.num_workers, shard_size=args.shard_size, on_error=args.on_error, devices=args.devices,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    m = encode_dataset(args.model if args.devices > 1 else model, args.data, args.out, file_list=args.file_list,
                       options=opts, overwrite=args.overwrite, device=device)
    print(f"{args.out}: {m['num_rows']} images as {m['grid'][0]}x{m['grid'][1]} tokens, {m['num_skipped']} skipped")
    return 0
