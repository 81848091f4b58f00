"""``vqgan-lc convert``: official release checkpoint -> model directory.

``--format vqgan-lc`` (default): an official VQGAN-LC ``.pth`` (needs ``--config`` or ``--preset``).
``--format mage``: MAGE's VQGAN (``vqgan_jax_strongaug.ckpt``, DiGIT's pixel tokenizer); ``--config``
is MAGE's ``vqgan.yaml`` and optional (the architecture is otherwise inferred from the tensor shapes).
``--format gpt``: the official VQGAN-LC GPT (``gpt-lc-100K-f16.pth``, minGPT) -> a GPT directory that
``vqgan-lc sample --gpt`` reads (``--n-head``, default 16 as the official code; ``--n-codes``, default
read from the tokenizer embedded in the file).
``--format digit``: a DiGIT fairseq checkpoint (stage 1, stage-2 AR or NAR) -> ``OUT/gpt`` plus ``OUT/tokenizer``
(DINOv2 weights and centroids held by the checkpoint) or ``OUT/codebook.safetensors`` (centroids only).
"""

from __future__ import annotations

import argparse

from ._args import positive_int, preset
from ._checks import check_output

_VQGAN_LC_ONLY = ("codebook", "preset", "embed_dim", "inference_only")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("vqgan-lc", "gpt", "mage", "digit"), default="vqgan-lc",
                   help="checkpoint family: vqgan-lc (official VQGAN-LC .pth, default), gpt (the official VQGAN-LC "
                        "GPT, gpt-lc-100K-f16.pth), mage (MAGE's VQGAN) or digit (DiGIT's fairseq stage-1 / "
                        "stage-2 checkpoint_*.pt)")
    p.add_argument("--stage", choices=("auto", "stage1", "stage2", "stage2-nar"), default="auto",
                   help="--format digit: which DiGIT GPT the file is (auto: from its keys and cfg model name; "
                        "stage2-nar = the MaskGIT stage 2, for a file whose cfg does not name st2vtlm_nar)")
    p.add_argument("--n-head", type=positive_int, help="--format digit: attention heads when the checkpoint's cfg lacks "
                                                        "them; --format gpt: attention heads (default 16, the official)")
    p.add_argument("--n-codes", type=positive_int, help="--format gpt: the tokenizer's codebook size (default: read "
                                                         "from the tokenizer stored in the file; 100000 for the release)")
    p.add_argument("--dinov2-model", help="--format digit: timm DINOv2 name for the embedded encoder "
                                         "(default: ViT-B/14 reg4 for 768-d centroids, ViT-L/14 reg4 for 1024-d)")
    p.add_argument("--checkpoint", required=True,
                   help="official .pth, e.g. vqgan-lc-100K-f16-dim8.pth (or vqgan_jax_strongaug.ckpt with --format mage)")
    p.add_argument("--codebook", help="the k-means codebook it was trained with, e.g. codebook-100K.pth")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="official vq_config.yaml (model.params.ddconfig); MAGE's vqgan.yaml with "
                                    "--format mage (optional there)")
    g.add_argument("--preset", type=preset, help="a preset name, e.g. vqgan-lc-f16-100k (see `vqgan-lc info --presets`)")
    p.add_argument("--embed-dim", type=positive_int, help="D' (default: the checkpoint's args.embed_dim)")
    p.add_argument("--inference-only", action="store_true",
                   help="store only the projected N x D' codes (3.2 MB at 100k) instead of the raw codebook")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model directory already in --out (other files there are kept)")
    p.set_defaults(_convert_parser=p)


DIGIT_OUT_NAMES = (r"gpt", r"tokenizer", r"codebook\.safetensors")
"""What ``--format digit`` writes into --out."""


def _prepare_out(args: argparse.Namespace) -> None:
    """Refuse an --out holding other files or another model unless --overwrite (before the slow conversion)."""
    from .._io import WEIGHTS_DIR_NAMES, prepare_output_dir

    digit = args.format == "digit"
    prepare_output_dir(args.out, "DiGIT conversion" if digit else "model directory", overwrite=args.overwrite,
                       own_names=DIGIT_OUT_NAMES if digit else WEIGHTS_DIR_NAMES, create=False)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._convert_parser
    check_output(args.out, "folder")
    if args.format != "digit" and (args.dinov2_model or args.stage != "auto"):
        parser.error("--stage and --dinov2-model apply to --format digit only")
    if args.format not in ("digit", "gpt") and args.n_head:
        parser.error("--n-head applies to --format digit and --format gpt only")
    if args.format != "gpt" and args.n_codes:
        parser.error("--n-codes applies to --format gpt only")
    if args.format == "gpt":
        given = [f"--{k.replace('_', '-')}" for k in (*_VQGAN_LC_ONLY, "config") if getattr(args, k)]
        if given:
            parser.error(f"{', '.join(given)} do not apply to --format gpt")
        return _run_gpt(args)
    if args.format == "digit":
        given = [f"--{k.replace('_', '-')}" for k in (*_VQGAN_LC_ONLY, "config") if getattr(args, k)]
        if given:
            parser.error(f"{', '.join(given)} do not apply to --format digit")
        _prepare_out(args)
        return _run_digit(args)
    if args.format == "mage":
        given = [f"--{k.replace('_', '-')}" for k in _VQGAN_LC_ONLY if getattr(args, k)]
        if given:
            parser.error(f"{', '.join(given)} apply to --format vqgan-lc only")
        _prepare_out(args)
        return _run_mage(args)
    if args.config is None and args.preset is None:
        parser.error("one of the arguments --config --preset is required")
    _prepare_out(args)

    from ..convert import convert_official

    model = convert_official(
        args.checkpoint, codebook=args.codebook, yaml_config=args.config, preset=args.preset, embed_dim=args.embed_dim
    )
    model.save_pretrained(args.out, inference_only=args.inference_only)
    c = model.config
    print(f"wrote {args.out}: f{c.downsample_factor}, D'={c.embed_dim}, codebook {c.quantizer.codebook_size} x "
          f"{c.quantizer.codebook_dim}{' (inference-only)' if args.inference_only else ''}")
    return 0


def _run_gpt(args: argparse.Namespace) -> int:
    from ..convert_gpt import OFFICIAL_N_HEAD, convert_official_gpt

    gpt = convert_official_gpt(args.checkpoint, n_head=args.n_head or OFFICIAL_N_HEAD, n_codes=args.n_codes)
    gpt.save_pretrained(args.out)
    c = gpt.config
    print(f"wrote {args.out}: official VQGAN-LC GPT ({c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, "
          f"{c.n_codes} image ids + {c.n_classes} classes, {c.grid[0]}x{c.grid[1]} grid)")
    return 0


def _run_mage(args: argparse.Namespace) -> int:
    from ..convert_mage import convert_mage

    model = convert_mage(args.checkpoint, yaml_config=args.config)
    model.save_pretrained(args.out)
    c = model.config
    print(f"wrote {args.out}: MAGE VQGAN f{c.downsample_factor}, {c.n_embed} codes x {c.embed_dim} dims, "
          f"ch {c.ch}, ch_mult {list(c.ch_mult)}")
    return 0


def _run_digit(args: argparse.Namespace) -> int:
    from ..convert_digit import convert_digit, save_digit_conversion

    conv = convert_digit(args.checkpoint, stage=args.stage, n_head=args.n_head)
    written = save_digit_conversion(conv, args.out, dinov2_model=args.dinov2_model)
    c = conv.gpt.config
    print(f"wrote {args.out}: DiGIT {conv.stage} GPT ({c.n_layer} layers, width {c.n_embd}, {c.norm_position}-LN, "
          f"{c.n_codes} ids) and {', '.join(sorted(written))}")
    return 0
