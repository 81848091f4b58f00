"""``vqgan-lc build-codebook``: frozen features of an image folder -> k-means -> ``codebook.safetensors``.

Both stages at once (features kept in ``--features-dir``, default ``<out>.features/``, so a rerun
resumes), or split: ``--features-only DIR`` extracts, ``--from-features DIR`` clusters.

Examples::

    # the paper: OpenAI CLIP ViT-L/14, 16x16 -> 4x4 pooling, 100 centres per ImageNet class
    vqgan-lc build-codebook --data imagenet/train --extractor clip --model ViT-L-14 --pretrained openai \\
        --pool 4 --per-class 100 --k 100000 --out codebook.safetensors
    # the same from a local file
    vqgan-lc build-codebook --data imagenet/train --extractor clip --model ViT-L-14-quickgelu \\
        --weights ViT-L-14.pt --pool 4 --per-class 100 --k 100000 --out codebook.safetensors
    # DiGIT: DINOv2 ViT-B/14 reg4, block -3, 8192 global centres (timm's name, fetched once)
    vqgan-lc build-codebook --data imagenet/train --extractor dinov2 --model vit_base_patch14_reg4_dinov2.lvd142m \\
        --k 8192 --out km_8k.safetensors
    vqgan-lc build-codebook --data imagenet/train --extractor dinov2 \\
        --weights dinov2_vitb14_reg4_pretrain.pth --k 8192 --out km_8k.safetensors
    # DiGIT's k-means data as released: ~10% of the images, Resize 224 + RandomCrop 224 + flip, float32
    vqgan-lc build-codebook --recipe digit-official --data imagenet/train --extractor dinov2 \
        --weights dinov2_vitb14_reg4_pretrain.pth --out km_8k.safetensors
    # offline demo: raw pixel patches
    vqgan-lc build-codebook --data photos/ --extractor pixels --pool 4 --k 1024 --out codebook.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .._system import default_num_workers
from ..errors import CodebookError
from ._args import device, nonnegative_int, positive_int, seed
from ._checks import check_device, check_output

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("images and extractor")
    src.add_argument("--recipe", choices=("default", "digit-official"), default="default",
                     help="k-means data recipe: default (every image, the extractor's center-crop view, float16) or "
                          "digit-official (DiGIT's: ~10%% of the images, Resize 224 + RandomCrop 224 + flip fed to "
                          "DINOv2 at 224, float32, --k 8192 (16384 for ViT-L) unless given; seeded by --seed)")
    src.add_argument("--image-fraction", type=float, help="keep each image with this probability (seeded by --seed; "
                                                          "default 1, digit-official 0.1)")
    src.add_argument("--data", help="image folder (classes = first-level sub-folders), 'wds:PATTERN' (WebDataset "
                                    "tars) or 'hf:NAME_OR_DIR[:SPLIT]' (a Hugging Face dataset)")
    src.add_argument("--file-list", help="text file with one relative/path[,label] per line (paths under --data)")
    src.add_argument("--extractor", choices=("clip", "dinov2", "pixels"), help="frozen feature extractor")
    src.add_argument("--model", help="clip: open_clip architecture, .json config or hf-hub:org/name (default "
                                     "ViT-L-14-quickgelu); "
                                     "dinov2: timm name (default vit_base_patch14_reg4_dinov2) or hub entry")
    src.add_argument("--weights", help="local weights file of the clip/dinov2 extractor (clip: an open_clip tag "
                                       "such as openai works too)")
    src.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG",
                     help="fetch the weights the library names, through its own cache, only now (offline: the cache "
                          "only): clip: an open_clip tag (--model ViT-L-14 --pretrained openai); dinov2: a timm tag, "
                          "or bare with a torch.hub name (--model dinov2_vitb14_reg --pretrained); a tagged timm name "
                          "(--model vit_base_patch14_reg4_dinov2.lvd142m) needs no flag")
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
    st.add_argument("--dtype", choices=("float16", "float32"), help="stored feature dtype (default float16; "
                                                                   "digit-official float32)")
    st.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard")
    st.add_argument("--batch-size", type=positive_int, default=32)
    st.add_argument("--workers", type=nonnegative_int, default=default_num_workers(),
                    help="DataLoader worker processes (default: 4, or the number of CPU cores when fewer)")
    st.add_argument("--overwrite", action="store_true",
                    help="extract the store afresh (also one made with other options); files of other names in "
                         "the folder are kept")

    km = p.add_argument_group("k-means")
    km.add_argument("--k", type=positive_int, help="codebook size N (global k-means; with --per-class it must equal K x classes)")
    km.add_argument("--per-class", type=positive_int, metavar="K", help="K centres per class (the paper: 100)")
    km.add_argument("--niter", type=positive_int, default=20, help="k-means iterations (default 20)")
    km.add_argument("--seed", type=seed, default=0)
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
    from ..codebook.recipes import RECIPES, ImageView, digit_kmeans_k

    progress = not args.no_progress
    gpu = {"auto": "auto", "yes": True, "no": False}[args.gpu]
    recipe = RECIPES[args.recipe]
    if args.recipe == "digit-official":
        if args.extractor not in (None, "dinov2"):
            raise CodebookError(f"--recipe digit-official clusters DINOv2 features; drop --extractor {args.extractor} "
                                "or pass --extractor dinov2")
        if args.image_size not in (None, recipe.image_size) or args.pool != 1 or args.per_class:
            raise CodebookError(f"--recipe digit-official fixes the view ({recipe.image_size} px, no pooling, global "
                                "k-means); drop --image-size, --pool and --per-class")
        args.extractor = "dinov2"
        args.image_size = recipe.image_size
        if args.k is None and args.per_class is None:
            args.k = digit_kmeans_k(args.model)
    fraction = recipe.fraction if args.image_fraction is None else args.image_fraction
    dtype = args.dtype or recipe.dtype
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
    if args.features_only is None:
        check_output(args.out, "file")  # before extraction and k-means, not after
    if args.from_features is None:
        check_output(store_dir, "folder", "--features-only" if args.features_only else "--features-dir")
    check_device(args.device)
    if args.from_features is None:
        from ..extractors import create_extractor

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        ext = create_extractor(
            args.extractor, model=args.model, weights=args.weights, hub_dir=args.hub_dir, layer=args.layer,
            image_size=args.image_size, patch_size=args.patch_size, quick_gelu=args.quick_gelu, device=device,
            pretrained=args.pretrained,
        )
        from ..codebook.recipes import subsample_images
        from ..sources import open_source

        images = subsample_images(open_source(args.data, args.file_list), fraction, args.seed)
        if fraction < 1.0:
            log.info("recipe %s: %d images kept (fraction %g, seed %d)", args.recipe, len(images), fraction, args.seed)
        store = build.extract_features(
            images, ext, store_dir, pool=args.pool, dtype=dtype,
            shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.workers,
            overwrite=args.overwrite, progress=progress,
            view=ImageView(random_crop_flip=recipe.random_view, seed=args.seed, recipe=args.recipe,
                           image_fraction=fraction),
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
