"""``vqgan-lc evaluate``: reconstruction metrics, codebook utilization and throughput over a split."""

from __future__ import annotations

import argparse

from ._args import device, nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (save_pretrained / convert output)")
    p.add_argument("--data", help="image folder, 'wds:PATTERN' or 'hf:NAME_OR_DIR[:SPLIT]': the split to encode, or "
                                  "the originals of --tokens")
    p.add_argument("--file-list", help="text file of 'relative/path[,label]' lines under --data (instead of a walk)")
    p.add_argument("--tokens", help="token directory from `vqgan-lc encode`: evaluate its stored ids (no re-encoding)")
    p.add_argument("--out", required=True, help="report folder (report.json, report.md, per_image.csv, PNGs)")
    p.add_argument("--image-size", type=positive_int,
                   help="short side resized then center-cropped (default: the model's; with --tokens, the manifest's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (also the throughput batch size)")
    p.add_argument("--num-workers", type=nonnegative_int, default=2, help="image decoding processes")
    p.add_argument("--lpips-alex-weights", metavar="PATH",
                   help="torchvision AlexNet ImageNet state dict (alexnet-owt-7be5be79.pth); enables LPIPS-Alex")
    p.add_argument("--lpips-vgg-weights", metavar="PATH",
                   help="torchvision VGG16 ImageNet state dict (vgg16-397923af.pth); enables LPIPS-VGG")
    p.add_argument("--lpips-convention", choices=("lpips", "official"), default="lpips",
                   help="lpips: [-1, 1] inputs, clamped reconstruction; official: VQGAN-LC's pyiqa call "
                        "(unclamped, 2x-1 applied to [-1, 1] inputs)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="FID Inception-v3 state dict (pt_inception-2015-12-05-6726825d.pth); enables rFID")
    p.add_argument("--device", type=device, help="torch device (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="evaluate --tokens even if the model does not match the manifest")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..metrics import EvaluateOptions, evaluate
    from ..metrics.report import METRIC_LABELS

    if args.data is None and args.tokens is None:
        print("vqgan-lc evaluate: error: pass --data FOLDER, or --tokens DIR (with --data for image metrics)",
              file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = EvaluateOptions(
        image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
        lpips_alex_weights=args.lpips_alex_weights, lpips_vgg_weights=args.lpips_vgg_weights,
        lpips_convention=args.lpips_convention, inception_weights=args.inception_weights, force=args.force,
    )
    report = evaluate(args.model, args.data, args.out, tokens=args.tokens, file_list=args.file_list, options=opts,
                      device=device)
    d = report["data"]
    print(f"{d['images']} images ({d['skipped']} skipped), {d['tokens_counted']:,} tokens -> {args.out}")
    for key, entry in report["metrics"].items():
        label, fmt = METRIC_LABELS.get(key, (key, "{:.4g}"))
        if entry["computed"]:
            value = fmt.format(entry["value"]) if entry.get("value") is not None else "n/a"
        else:
            value = "not computed" + (f" (pass {entry['enable_with']})" if entry.get("enable_with") else "")
        print(f"  {label:<28} {value}")
    return 0
