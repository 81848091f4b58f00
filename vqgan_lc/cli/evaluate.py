"""``vqgan-lc evaluate``: reconstruction metrics, codebook utilization and throughput over a split."""

from __future__ import annotations

import argparse

from ._args import device, nonnegative_int, positive_int
from ._checks import check_device, check_output


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
    p.add_argument("--lpips-alex-weights", metavar="PATH|NAME",
                   help="torchvision AlexNet ImageNet state dict: a path, or 'torchvision' / alexnet-owt-7be5be79.pth "
                        "(from, or fetched into, the torch hub cache); default: that cached file if present")
    p.add_argument("--lpips-vgg-weights", metavar="PATH|NAME",
                   help="torchvision VGG16 ImageNet state dict: a path, or 'torchvision' / vgg16-397923af.pth "
                        "(from, or fetched into, the torch hub cache); default: that cached file if present")
    p.add_argument("--protocol", choices=("standard", "official"), default="standard",
                   help="standard: PIL bicubic resize, torchmetrics rFID vs the centre crops; official: the official "
                        "VQGAN-LC evaluation (OpenCV bilinear resize, LPIPS with pyiqa's convention, clean-fid "
                        "of PNG reconstructions vs the uncropped originals; needs vqgan-lc[eval])")
    p.add_argument("--lpips-convention", choices=("lpips", "official"), default=None,
                   help="lpips: [-1, 1] inputs, clamped reconstruction; official: VQGAN-LC's pyiqa call "
                        "(unclamped, 2x-1 applied to [-1, 1] inputs). Default: the protocol's")
    p.add_argument("--cleanfid-inception", metavar="PATH",
                   help="clean-fid's inception-2015-12-05.pt (or its folder) for --protocol official "
                        "(default: clean-fid's own cache folder; nothing is downloaded)")
    p.add_argument("--inception-weights", metavar="PATH|NAME",
                   help="FID Inception-v3 state dict: a path, or torch-fidelity / pytorch-fid (their "
                        "*inception-2015-12-05-6726825d.pth from, or fetched into, the torch hub cache); default: "
                        "a cached one if present")
    p.add_argument("--device", type=device, help="torch device (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="evaluate --tokens even if the model does not match the manifest")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds other files (kept) or an earlier report (replaced)")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from .._io import prepare_output_dir
    from ..metrics import EvaluateOptions, evaluate
    from ..metrics.report import METRIC_LABELS, REPORT_NAMES

    if args.data is None and args.tokens is None:
        print("vqgan-lc evaluate: error: pass --data FOLDER, or --tokens DIR (with --data for image metrics)",
              file=sys.stderr)
        return 2
    check_output(args.out, "folder")
    check_device(args.device)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prepare_output_dir(args.out, "evaluation report", overwrite=args.overwrite, own_names=REPORT_NAMES, create=False)
    opts = EvaluateOptions(
        image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
        lpips_alex_weights=args.lpips_alex_weights, lpips_vgg_weights=args.lpips_vgg_weights,
        lpips_convention=args.lpips_convention, inception_weights=args.inception_weights, force=args.force,
        protocol=args.protocol, cleanfid_inception=args.cleanfid_inception,
    )
    report = evaluate(args.model, args.data, args.out, tokens=args.tokens, file_list=args.file_list, options=opts,
                      device=device)
    d = report["data"]
    print(f"{d['images']} images ({d['skipped']} skipped), {d['tokens_counted']:,} tokens, {report['protocol']} "
          f"protocol -> {args.out}")
    for key, entry in report["metrics"].items():
        label, fmt = METRIC_LABELS.get(key, (key, "{:.4g}"))
        if entry["computed"]:
            value = fmt.format(entry["value"]) if entry.get("value") is not None else "n/a"
        else:
            value = "not computed" + (f" (pass {entry['enable_with']})" if entry.get("enable_with") else "")
        print(f"  {label:<28} {value}")
    return 0
