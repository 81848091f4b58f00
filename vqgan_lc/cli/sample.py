"""``vqgan-lc sample``: sample images from a GPT prior and decode them with a VQGAN-LC model.

::

    # VQGAN-LC + GPT: 16 images of class 3, top-k 10% of the vocabulary (the paper's setting)
    vqgan-lc sample --gpt gpt/ --tokenizer vqgan-model/ --class 3 --n 16 --out samples/
    # the official VQGAN-LC GPT and its tokenizer, by release name (downloaded, converted once, cached)
    vqgan-lc sample --gpt vqgan-lc-gpt-f16-100k --tokenizer vqgan-lc-f16-100k --class 3 --n 16 --out samples/
    # DiGIT two-stage: stage 1 (DiGIT ids, top-k 200) -> stage 2 (VQGAN-LC ids, top-p 0.8) -> decoder
    vqgan-lc sample --gpt stage1/ --stage2 stage2/ --tokenizer vqgan-model/ --n 16 --out samples/
    # a MaskGIT (NAR) stage 2 is recognised from its config: 8 parallel steps, choice temperature 4.5

``--class`` takes indices or class names (as recorded from the training tokens); without it a
class-conditional GPT samples the null class (needs ``class_dropout`` training). PNGs are written as
``class0003_00000.png`` / ``sample_00000.png`` plus ``ids.npy``, ``labels.npy`` (and ``digit_ids.npy``); an
``--out`` that holds other files or an earlier run's samples is refused unless ``--overwrite`` (which removes
the earlier samples and keeps the other files).
"""

from __future__ import annotations

import argparse
import logging

from ._args import device, nonnegative_float, positive_int, seed
from ._checks import check_device, check_output

log = logging.getLogger(__name__)

SAMPLE_NAMES = (r"class\d{4}_\d{5,}\.png", r"sample_\d{5,}\.png", r"ids\.npy", r"labels\.npy", r"digit_ids\.npy")
"""What sample writes into --out."""


def parse_top_k(value: str) -> int | float:
    """``200`` -> 200 ids, ``0.1`` or ``10%`` -> 10% of the vocabulary, ``0``/``none``/``100%`` -> 0 (off)."""
    v = value.strip().lower()
    if v in ("none", "off", "0"):
        return 0
    bad = argparse.ArgumentTypeError(f"expected an id count (200), a fraction in (0, 1) (0.1), a percentage (10%) "
                                     f"or none, got {value!r}")
    try:
        f = float(v[:-1]) / 100.0 if v.endswith("%") else float(v)
    except ValueError:
        raise bad from None
    if not 0.0 < f < float("inf") or (v.endswith("%") and f > 1.0):
        raise bad
    if v.endswith("%"):
        return 0 if f == 1.0 else f  # 100%: every id, i.e. no filter
    if f < 1.0:
        return f
    if not f.is_integer():
        raise bad
    return int(f)


def _top_p(value: str) -> float:
    """A nucleus mass in (0, 1]; ``none``/``off`` -> 1.0 (off)."""
    if value.strip().lower() in ("none", "off"):
        return 1.0
    try:
        p = float(value)
    except ValueError:
        p = float("nan")
    if not 0.0 < p <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a nucleus mass in (0, 1] or none, got {value!r}")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpt", required=True, help="GPT directory (train-gpt / convert --format gpt output), Hub repo id "
                                                "or release name (vqgan-lc-gpt-f16-100k); DiGIT: the stage-1 GPT")
    p.add_argument("--stage2", help="DiGIT stage-2 GPT directory (prefix = stage-1 ids -> VQGAN-LC ids)")
    p.add_argument("--tokenizer", help="VQGAN-LC model directory, Hub repo id or release name that decodes the sampled "
                                       "ids (default: the release the GPT was published with, if it records one)")
    p.add_argument("--class", dest="classes", nargs="+", metavar="C",
                   help="class indices or names; --n images of each (default: null class / unconditional)")
    p.add_argument("--n", type=positive_int, default=16, help="images per class (default 16)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    s = p.add_argument_group("sampling (the last GPT: --gpt alone, or --stage2)")
    s.add_argument("--top-k", type=parse_top_k, default=None,
                   help="ids to keep: N, a fraction (0.1) or N%% (default 10%% of the vocabulary; DiGIT stage 2: off)")
    s.add_argument("--top-p", type=_top_p, default=None, help="nucleus mass (DiGIT stage 2 default 0.8)")
    s.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (needs a null class)")
    g = p.add_argument_group("DiGIT stage 1 sampling (with --stage2)")
    g.add_argument("--stage1-top-k", type=parse_top_k, default=None,
                   help="default as the official scripts: 200 (base), 300 (class-conditional base), 400 (large)")
    g.add_argument("--stage1-top-p", type=_top_p, default=None)
    g.add_argument("--stage1-temperature", type=nonnegative_float, default=1.0)
    g.add_argument("--stage1-cfg", type=float, default=None)
    n = p.add_argument_group("NAR (MaskGIT) stage 2 decoding (used when --stage2 is a bidirectional model)")
    n.add_argument("--nar-steps", type=positive_int, default=8, help="parallel decoding steps (DiGIT: 8)")
    n.add_argument("--choice-temperature", type=nonnegative_float, default=4.5,
                   help="Gumbel scale of the re-masking confidence, annealed by 1 - t/steps (DiGIT: 4.5)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", type=device, help="torch device (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="sample even if the tokenizer did not make the GPT's tokens")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds other files (kept) or earlier samples (removed first)")


def resolve_classes(names: list[str] | None, provenance: dict) -> list[int]:
    """``--class`` values -> indices; names are looked up in the classes of the GPT's training tokens."""
    from ..errors import VQGANLCError

    if not names:
        return []
    classes = list((provenance.get("tokens") or {}).get("classes") or [])
    out = []
    for n in names:
        if n.lstrip("-").isdigit():
            out.append(int(n))
        elif n in classes:
            out.append(classes.index(n))
        else:
            raise VQGANLCError(f"unknown class {n!r}; pass an index or one of: {', '.join(classes[:20]) or '(no names recorded)'}")
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from .._io import prepare_output_dir
    from ..errors import TokenRangeError, VQGANLCError
    from ..generate.gpt import GPT
    from ..generate.maskgit import MaskGITSampling
    from ..generate.pipeline import digit_stage1_top_k, sample_images, sample_two_stage, save_images
    from ..generate.sampling import SamplingConfig
    from ..tokenizer import DecodingTokenizer, identity_mismatch, load_tokenizer

    check_output(args.out, "folder")
    check_device(args.device)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpt = GPT.from_pretrained(args.gpt, map_location=device)
    stage2 = GPT.from_pretrained(args.stage2, map_location=device) if args.stage2 else None
    tokenizer = args.tokenizer or (stage2 or gpt).provenance.get("tokenizer_release")
    if not tokenizer:
        raise VQGANLCError(f"{args.stage2 or args.gpt} records no tokenizer; pass the model that made its tokens "
                           "with --tokenizer")
    vq = load_tokenizer(tokenizer, map_location=device)
    if not isinstance(vq, DecodingTokenizer):
        raise VQGANLCError(f"{tokenizer} is a {vq.kind} tokenizer, which has no pixel decoder; pass a "
                           "VQGAN-LC or MAGE VQGAN model as --tokenizer")
    last = stage2 or gpt
    made_by = (last.provenance.get("tokens") or {}).get("tokenizer") or {}
    problems = identity_mismatch(made_by, vq) if made_by.get("config_hash") else []
    if problems:
        msg = f"{args.stage2 or args.gpt} was trained on tokens of another model ({'; '.join(problems)})"
        if not args.force:
            raise TokenRangeError(msg + "; pass --force to decode anyway")
        log.warning("%s", msg)

    prepare_output_dir(args.out, "folder of samples", overwrite=args.overwrite, own_names=SAMPLE_NAMES, create=False)
    names = resolve_classes(args.classes, gpt.provenance)
    if not names and gpt.config.class_conditional and gpt.config.null_id is None:
        raise VQGANLCError(f"{args.gpt} is class-conditional without a null class (as the official VQGAN-LC GPT); "
                           f"pass --class with indices in [0, {gpt.config.n_classes})")
    labels = torch.tensor([c for c in names for _ in range(args.n)] if names else [-1] * args.n, dtype=torch.long)
    top_k = args.top_k if args.top_k is not None else (None if stage2 is not None else 0.1)
    top_p = args.top_p if args.top_p is not None else (0.8 if stage2 is not None and args.top_k is None else None)
    sampling = SamplingConfig(temperature=args.temperature, top_k=top_k, top_p=top_p, cfg_scale=args.cfg)
    try:
        if stage2 is None:
            res = sample_images(gpt, vq, n=len(labels), labels=labels, sampling=sampling, seed=args.seed,
                                batch_size=args.batch_size)
        else:
            s1_top_k = args.stage1_top_k if args.stage1_top_k is not None else digit_stage1_top_k(gpt.config)
            s1 = SamplingConfig(temperature=args.stage1_temperature, top_k=s1_top_k, top_p=args.stage1_top_p,
                                cfg_scale=args.stage1_cfg)
            nar = MaskGITSampling(steps=args.nar_steps, temperature=args.temperature,
                                  choice_temperature=args.choice_temperature)
            if stage2.config.bidirectional:
                log.info("stage 2 is a MaskGIT (NAR) model: %d parallel steps", nar.steps)
            res = sample_two_stage(gpt, stage2, vq, n=len(labels), labels=labels, stage1_sampling=s1,
                                   stage2_sampling=sampling, seed=args.seed, batch_size=args.batch_size,
                                   stage2_nar=nar)
    except ValueError as e:
        raise VQGANLCError(str(e)) from e
    out = Path(args.out)
    paths = save_images(res.images, out, res.labels)
    np.save(out / "ids.npy", res.ids.numpy().astype(np.int64))
    np.save(out / "labels.npy", res.labels.numpy())
    if res.prefix_ids is not None:
        np.save(out / "digit_ids.npy", res.prefix_ids.numpy().astype(np.int64))
    print(f"wrote {len(paths)} images ({res.images.shape[2]}x{res.images.shape[3]}) to {out}")
    return 0
