"""``vqgan-lc build-codebook``: frozen features of an image folder -> k-means -> ``codebook.safetensors``.

Both stages at once (features kept in ``--features-dir``, default ``<out>.features/``, so a rerun
resumes), or split: ``--features-only DIR`` extracts, ``--from-features DIR`` clusters.

Examples::

    # the paper: OpenAI CLIP ViT-L/14, 16x16 -> 4x4 pooling, 100 centres per ImageNet class
    vqgan-lc build-codebook --data imagenet/train --extractor clip --model ViT-L-14-quickgelu \\
        --weights ViT-L-14.pt --pool 4 --per-class 100 --k 100000 --out codebook.safetensors
    # DiGIT: DINOv2 ViT-B/14 reg4, block -3, 8192 global centres
    vqgan-lc build-codebook --data imagenet/train --extractor dinov2 \\
        --weights dinov2_vitb14_reg4_pretrain.pth --k 8192 --out km_8k.safetensors
    # offline demo: raw pixel patches
    vqgan-lc build-codebook --data photos/ --extractor pixels --pool 4 --k 1024 --out codebook.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import CodebookError
from ._args import device, nonnegative_int, positive_int

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("images and extractor")
    src.add_argument("--data", help="image folder (classes = first-level sub-folders), 'wds:PATTERN' (WebDataset "
                                    "tars) or 'hf:NAME_OR_DIR[:SPLIT]' (a Hugging Face dataset)")
    src.add_argument("--file-list", help="text file with one relative/path[,label] per line (paths under --data)")
    src.add_argument("--extractor", choices=("clip", "dinov2", "pixels"), help="frozen feature extractor")
    src.add_argument("--model", help="clip: open_clip architecture or .json config (default ViT-L-14-quickgelu); "
                                     "dinov2: timm name (default vit_base_patch14_reg4_dinov2) or hub entry")
    src.add_argument("--weights", help="local weights file of the clip/dinov2 extractor (never downloaded)")
    src.add_argument("--hub-dir", help="dinov2: a local clone of the DINOv2 torch.hub repository")
    src.add_argument("--layer", type=int, help="dinov2: block index, negative from the end (default -3, DiGIT)")
    src.add_argument("--quick-gelu", action="store_true", default=None,
                     help="clip: force QuickGELU (OpenAI weights; implied by the -quickgelu names)")
    src.add_argument("--image-size", type=positive_int, help="pixels: crop size (default 256); dinov2: load size (default 256)")
    src.add_argument("--patch-size", type=positive_int, default=16, help="pixels: patch size (default 16 -> 768-d)")
    src.add_argument("--pool", type=positive_int, default=1, help="k x k average pooling of the feature grid (paper: 4)")
    src.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")

    st = p.add_argument_group("feature store")
    stage = st.add_mutually_exclusive_group()
    stage.add_argument("--features-only", metavar="DIR", help="only extract features into DIR")
    stage.add_argument("--from-features", metavar="DIR", help="only cluster the features in DIR")
    st.add_argument("--features-dir", metavar="DIR", help="where to keep features (default: <out>.features)")
    st.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
    st.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard")
    st.add_argument("--batch-size", type=positive_int, default=32)
    st.add_argument("--workers", type=nonnegative_int, default=4, help="DataLoader worker processes")
    st.add_argument("--overwrite", action="store_true", help="rebuild a store made with other options")

    km = p.add_argument_group("k-means")
    km.add_argument("--k", type=positive_int, help="codebook size N (global k-means; with --per-class it must equal K x classes)")
    km.add_argument("--per-class", type=positive_int, metavar="K", help="K centres per class (the paper: 100)")
    km.add_argument("--niter", type=positive_int, default=20, help="k-means iterations (default 20)")
    km.add_argument("--seed", type=int, default=0)
    km.add_argument("--max-points-per-centroid", type=positive_int, default=256,
                    help="subsample cap: at most K x this many vectors are clustered (faiss default 256)")
    km.add_argument("--small-class", choices=("error", "take-all"), default="error",
                    help="a class with fewer vectors than --per-class: stop, or keep all its vectors as centres")
    km.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto", help="faiss on the GPU")
    p.add_argument("--out", help="output codebook file (codebook.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_dependencies(args: argparse.Namespace) -> None:
    """Fail before any feature is extracted when an optional package this run needs is missing."""
    from .._deps import is_available, require

    if args.from_features is None and args.extractor == "clip":
        require("open_clip", extra="codebook", purpose="--extractor clip")
    if args.from_features is None and args.extractor == "dinov2" and not args.hub_dir:
        require("timm", extra="codebook", purpose="--extractor dinov2")
    if args.features_only is None and not is_available("faiss"):
        require("faiss", extra="codebook", purpose="k-means clustering")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..codebook import build

    progress = not args.no_progress
    gpu = {"auto": "auto", "yes": True, "no": False}[args.gpu]
    if args.from_features is None:
        if not args.data or not args.extractor:
            raise CodebookError("--data and --extractor are required unless --from-features DIR is given")
    if args.features_only is None:
        if not args.out:
            raise CodebookError("--out is required (the codebook file to write) unless --features-only DIR is given")
        if args.k is None and args.per_class is None:
            raise CodebookError("give the codebook size with --k N (or --per-class K for per-class k-means)")

    _check_dependencies(args)
    store_dir = args.features_only or args.from_features or args.features_dir or build.default_features_dir(args.out)
    if args.from_features is None:
        from ..extractors import create_extractor

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        ext = create_extractor(
            args.extractor, model=args.model, weights=args.weights, hub_dir=args.hub_dir, layer=args.layer,
            image_size=args.image_size, patch_size=args.patch_size, quick_gelu=args.quick_gelu, device=device,
        )
        store = build.extract_features(
            args.data, ext, store_dir, file_list=args.file_list, pool=args.pool, dtype=args.dtype,
            shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.workers,
            overwrite=args.overwrite, progress=progress,
        )
        if args.features_only is not None:
            print(f"features: {store.num_images} images x {store.grid[0]}x{store.grid[1]} x {store.dim} "
                  f"in {store.root} ({len(store.skipped)} unreadable skipped)")
            return 0
    else:
        from ..codebook import FeatureStore

        store = FeatureStore.open(store_dir)
        if args.pool != 1 and args.pool != store.pool:
            raise CodebookError(
                f"--pool {args.pool} differs from the store's pooling {store.pool}; pooling happens at extraction, "
                "so extract again with the new --pool"
            )
    cb = build.codebook_from_features(
        store, k=args.k, per_class=args.per_class, niter=args.niter, seed=args.seed,
        max_points_per_centroid=args.max_points_per_centroid, small_class=args.small_class, gpu=gpu,  # type: ignore[arg-type]
        progress=progress,
    )
    from ..codebook import save_codebook

    save_codebook(args.out, cb.vectors, cb.provenance)
    mode = f"{cb.provenance['per_class_k']} per class x {len(cb.provenance['class_order'])} classes" \
        if cb.provenance["mode"] == "per-class" else "global"
    print(f"wrote {Path(args.out)}: {cb.size} x {cb.dim} codebook ({mode}, {cb.provenance['n_points']:,} vectors "
          f"from {store.num_images} images, extractor {cb.provenance['extractor']})")
    return 0
