"""``vqgan-lc encode``: an image folder, file list, WebDataset tars or a HF dataset -> a token directory.

Many machines (torchrun; SLURM's variables work too, and ``--shard-index/--num-shards`` for job
arrays without a rendezvous)::

    torchrun --nnodes 4 --nproc-per-node 8 --node-rank $R --master-addr HOST --master-port 29500 \
        $(which vqgan-lc) encode --model DIR --data 'wds:train-{000000..001023}.tar' --out tokens/

``--model DIR`` is a VQGAN-LC model directory or a DiGIT tokenizer directory (detected from its
config.json; ``--tokenizer`` checks the kind). A DiGIT tokenizer can also be assembled on the fly::

    vqgan-lc encode --tokenizer digit --codebook km_8k.safetensors \
        --weights dinov2_vitb14_reg4_pretrain.pth --data imagenet/train --out tokens-digit/ \
        [--save-tokenizer digit-tokenizer/]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._args import device, nonnegative_int, positive_int
from ._checks import check_device, check_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="tokenizer directory: a VQGAN-LC model (save_pretrained / convert output) or a "
                                   "DiGIT tokenizer (DiscriminativeTokenizer.save_pretrained / --save-tokenizer)")
    p.add_argument("--tokenizer", choices=("auto", "vqgan-lc", "digit"), default="auto",
                   help="the tokenizer kind (default: detected from --model); digit with --codebook builds one")
    d = p.add_argument_group("DiGIT tokenizer from files (--tokenizer digit without --model)")
    d.add_argument("--codebook", help="DINOv2 k-means centroids from `vqgan-lc build-codebook --extractor dinov2`, or DiGIT's km_8k.npy")
    d.add_argument("--weights", help="local DINOv2 weights file (e.g. dinov2_vitb14_reg4_pretrain.pth); without it, "
                                     "the weights --dinov2-model names are fetched through its library's cache")
    d.add_argument("--dinov2-model", default="vit_base_patch14_reg4_dinov2",
                   help="timm architecture or torch.hub entry (default: DiGIT's ViT-B/14 with 4 registers); a tagged "
                        "timm name (vit_base_patch14_reg4_dinov2.lvd142m) or a torch.hub name (dinov2_vitb14_reg) "
                        "without --weights names pretrained weights")
    d.add_argument("--hub-dir", help="a local clone of the DINOv2 torch.hub repository")
    d.add_argument("--layer", type=int, default=-3, help="DINOv2 block, negative from the end (default -3, DiGIT)")
    d.add_argument("--no-provenance-check", action="store_true",
                   help="use centroids whose recorded extractor, block, pooling or weights differ from these")
    d.add_argument("--save-tokenizer", metavar="DIR", help="also write the assembled DiGIT tokenizer directory")
    p.add_argument("--data", required=True,
                   help="image folder (recursive; classes = first-level sub-folders), 'wds:PATTERN' (WebDataset "
                        "tars, brace patterns such as 'wds:train-{000000..000099}.tar'; image jpg/jpeg/png/webp, "
                        "class cls) or 'hf:NAME_OR_DIR[:SPLIT]' (a Hugging Face dataset or save_to_disk folder)")
    p.add_argument("--file-list", help="text file of 'relative/path[,label]' lines under --data (instead of a walk)")
    p.add_argument("--out", required=True, help="token directory to write (resumable)")
    p.add_argument("--image-size", type=positive_int,
                   help="short side resized then center-cropped (default: the image_size of the tokenizer's "
                        "preprocessing; 256 for DiGIT)")
    p.add_argument("--resize", choices=("shorter-side", "official"),
                   help="shorter-side: PIL bicubic with antialias (vqgan-lc's rule); official: the official VQGAN-LC "
                        "albumentations rule (OpenCV bilinear, no antialias, floored crop offset; needs "
                        "vqgan-lc[eval]). Default: the tokenizer's preprocessing; recorded in the manifest")
    p.add_argument("--jpeg-draft", action="store_true",
                   help="decode JPEGs at 1/2, 1/4 or 1/8 scale (short side kept >= 2x --image-size) before the resize: "
                        "much faster for large files, slightly different pixels and ids; recorded in the manifest")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--num-workers", type=nonnegative_int, default=2, help="image decoding processes")
    p.add_argument("--cpu-parallel-batches", type=nonnegative_int, default=0, metavar="N",
                   help="CPU only: N batches at once, each decoded and encoded by its own thread with 1/N of "
                        "torch's threads, instead of --num-workers processes (faster on few-core CPU machines; "
                        "N batches' memory; ids as with that thread count). Default 0: off")
    p.add_argument("--devices", type=positive_int, default=1, help="processes, one per GPU (or sharing the CPU cores)")
    p.add_argument("--shard-size", type=positive_int, default=4096, help="source images per shard")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="an unreadable image is skipped and recorded (skip) or stops the run (fail)")
    p.add_argument("--latents", choices=("float16", "float32"),
                   help="also store the continuous pre-quantization latents (n, D', h, w) for LDM/DiT/SiT, with "
                        "per-channel mean/std and a scale factor in the manifest")
    p.add_argument("--augment", choices=("none", "flip", "ten-crop"), default="none",
                   help="store LlamaGen-style variants per image: rows (2 or 10, h, w)")
    p.add_argument("--shard-index", type=nonnegative_int, metavar="I",
                   help="job arrays: this task encodes the shards k with k %% --num-shards == I (no rendezvous); "
                        "torchrun's RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS are used when unset")
    p.add_argument("--num-shards", type=positive_int, metavar="N", help="job arrays: the number of tasks")
    p.add_argument("--overwrite", action="store_true",
                   help="encode everything again, replacing the tokens already in --out (made with this or another "
                        "model or options); files of other names there are kept")
    p.add_argument("--device", type=device, help="torch device for a single-process run (default: cuda if available)")


if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


def load_cli_tokenizer(args: argparse.Namespace) -> Tokenizer:
    """The tokenizer named by ``--model`` / ``--tokenizer`` / ``--codebook`` (checked against ``--tokenizer``)."""
    from ..errors import VQGANLCError
    from ..tokenizer import load_tokenizer

    if args.model is None:
        if args.tokenizer != "digit" or not args.codebook:
            raise VQGANLCError("pass --model DIR, or --tokenizer digit with --codebook FILE and --weights FILE")
        from ..digit import DiscriminativeTokenizer

        tok = DiscriminativeTokenizer.from_files(args.codebook, args.weights or None, model=args.dinov2_model,
                                                 hub_dir=args.hub_dir, layer=args.layer,
                                                 check_provenance=not args.no_provenance_check)
        if args.save_tokenizer:
            tok.save_pretrained(args.save_tokenizer)
        return tok
    model = load_tokenizer(args.model)
    if args.tokenizer != "auto" and args.tokenizer != model.kind:
        raise VQGANLCError(f"{args.model} holds a {model.kind} tokenizer, not {args.tokenizer}; "
                           "check --model / --tokenizer")
    return model


def run(args: argparse.Namespace) -> int:
    from ..errors import EncodeError, VQGANLCError
    from ..tokens import EncodeOptions, encode_dataset

    check_output(args.out, "folder")
    check_output(args.save_tokenizer, "folder", "--save-tokenizer")
    check_device(args.device)
    if (args.shard_index is None) != (args.num_shards is None):
        raise VQGANLCError("pass --shard-index and --num-shards together")
    if args.num_shards is not None and args.shard_index >= args.num_shards:
        raise VQGANLCError(f"--shard-index must be below --num-shards ({args.num_shards})")
    model = load_cli_tokenizer(args)
    opts = EncodeOptions(
        image_size=args.image_size, batch_size=args.batch_size,
        num_workers=args.num_workers, shard_size=args.shard_size, on_error=args.on_error, devices=args.devices,
        jpeg_draft=args.jpeg_draft, cpu_parallel_batches=args.cpu_parallel_batches,
        resize=args.resize or model.preprocessing.get("resize", "shorter-side"), latents=args.latents,
        augment=args.augment, shard_index=args.shard_index, num_shards=args.num_shards,
    )
    source = args.model if args.devices > 1 and args.model else model
    # device None: the same rule as the Python API (cuda[:LOCAL_RANK] when available, else cpu)
    m = encode_dataset(source, args.data, args.out, file_list=args.file_list,
                       options=opts, overwrite=args.overwrite, device=args.device)
    if not m.get("complete", True):
        print(f"{args.out}: {m['shards_done']} of {m['num_shards']} shards finished; the last task to finish (or "
              "a rerun of this command) writes the manifest")
        return 0
    if m["num_rows"] == 0:
        first = f" ({m['skipped'][0]['path']}: {m['skipped'][0]['reason']})" if m["skipped"] else ""
        raise EncodeError(f"none of the {m['num_skipped']} images under {args.data} could be read{first}, so "
                          f"{args.out} holds no tokens; check --data (git-lfs pointers? another folder?)")
    print(f"{args.out}: {m['num_rows']} images as {m['grid'][0]}x{m['grid'][1]} tokens, {m['num_skipped']} skipped "
          f"({m['tokenizer']['kind']} tokenizer)")
    return 0
