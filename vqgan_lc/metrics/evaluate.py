"""The evaluation pipeline behind ``vqgan-lc evaluate``: every image of a split (or every row of a
token directory) -> PSNR (Y and RGB), SSIM, LPIPS (AlexNet, VGG), rFID, codebook utilization and
perplexity, encode/decode throughput -> the report files of ``vqgan_lc.metrics.report``.

Two modes:

``images``  images are resized (short side, bicubic) and center-cropped to ``image_size``, encoded
            and decoded by the model.
``tokens``  the ids stored by ``vqgan-lc encode`` are decoded without re-encoding; the originals (for
            the image metrics) are read from ``data`` at the paths the manifest lists, with the image
            size the tokens were made at. Without ``data`` only usage and decode throughput are computed.

A metric whose weights file is not given is reported as not computed, with the option that enables
it; every other metric still runs.

Two protocols (``EvaluateOptions.protocol``; the report names it):

``standard``  vqgan-lc's: PIL bicubic (antialiased) resize + centre crop, LPIPS with the ``lpips``
              convention, rFID with torchmetrics/torch-fidelity against the evaluated centre crops.
``official``  the official ``eval_reconstruction.py``: albumentations ``SmallestMaxSize`` (OpenCV
              bilinear, no antialias) + ``CenterCrop``, reconstruction clamped for PSNR/SSIM but not
              for LPIPS (AlexNet, pyiqa's input convention), rFID with clean-fid (mode "clean") of the
              reconstructions saved as PNG against the *uncropped* original files
              (``vqgan_lc.metrics.clean_fid``). In token mode the originals are prepared as the
              manifest records.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..data import (
    ImageDataset,
    ImageList,
    ImageSourceError,
    Preprocessing,
    ResizeRule,
    collate,
    to_uint8,
)
from ..errors import EvaluateError, ImageShapeError, MissingDependencyError, MissingWeightsError
from ..model import VQGANLC
from ..named_weights import CheckpointRole
from ..progress import Progress
from ..quantize import CodebookUsage
from ..sources import ImageSource, open_source, source_kind
from . import clean_fid as clean_fid_mod
from .fid import FID_IMPLEMENTATION, build_fid
from .image import psnr, ssim, to_unit
from .perceptual import LPIPSConvention, LPIPSMetric
from .report import REPORT_FORMAT, REPORT_FORMAT_VERSION, computed, not_computed, write_report

log = logging.getLogger(__name__)

EvaluateMode = Literal["images", "tokens"]
Protocol = Literal["standard", "official"]
PROTOCOLS: tuple[str, ...] = ("standard", "official")
GRID_IMAGES = 8
OFFICIAL_RECONSTRUCTIONS = "reconstructions-png"
"""Sub-folder of the report folder with every reconstruction as PNG (the official protocol's rFID input)."""



@dataclass(frozen=True)
class EvaluateOptions:
    """How to evaluate.

    ``image_size``: short side resized then center-cropped (default: the model's resolution; in token
    mode, the size recorded in the manifest). Weights paths left ``None`` mark that metric not computed.
    ``lpips_convention``: see ``vqgan_lc.metrics.perceptual``; left out, ``lpips`` for the standard
    protocol and ``official`` for the official one. ``protocol``: ``standard`` or ``official`` (see the
    module docstring). ``cleanfid_inception``: clean-fid's ``inception-2015-12-05.pt`` (the file or its
    folder) for the official rFID; left out, clean-fid's own cache folder is looked at.
    """

    image_size: int | None = None
    batch_size: int = 16
    num_workers: int = 2
    lpips_alex_weights: str | None = None
    lpips_vgg_weights: str | None = None
    lpips_convention: LPIPSConvention | None = None
    inception_weights: str | None = None
    force: bool = False
    protocol: Protocol = "standard"
    cleanfid_inception: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.lpips_convention is None:
            object.__setattr__(self, "lpips_convention", "official" if self.protocol == "official" else "lpips")
        if self.batch_size < 1 or self.num_workers < 0 or (self.image_size is not None and self.image_size < 1):
            raise ValueError("batch_size and image_size must be positive, num_workers >= 0")
        if self.lpips_convention not in ("lpips", "official"):
            raise ValueError(f"lpips_convention must be 'lpips' or 'official', got {self.lpips_convention!r}")


IMPLEMENTATION_NOTES = {
    "psnr": "per image on [0, 1] images (reconstruction clamped to [-1, 1] first, as the official evaluation), "
    "10 log10(1 / (MSE + 1e-8)); Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255 (ITU-R BT.601, the "
    "pyiqa/basicsr convention of the official `test_y_channel=True, color_space='ycbcr'`); mean over images",
    "ssim": "torchmetrics structural_similarity_index_measure on RGB [0, 1]: 11x11 Gaussian window, sigma 1.5, "
    "k1 0.01, k2 0.03, valid region, data_range 1, with piq's pre-downsampling by round(min(H, W) / 256) "
    "(piq.ssim defaults, as the official evaluation); mean over images",
    "lpips": "lpips package v0.1 (AlexNet and VGG16 trunks from local torchvision files, lin layers from the lpips "
    "wheel)",
    "rfid": FID_IMPLEMENTATION + "; reference set = the evaluated originals (center crops), reconstructions "
    "as uint8; the official protocol uses clean-fid against the uncropped val JPEGs",
    "utilization": "distinct ids over every token of the split / codebook size (CodebookUsage histogram); "
    "perplexity = exp(entropy of the id histogram)",
    "throughput": "model only (no image decoding): encode = encoder + quant_conv + nearest-code search, "
    "decode = code lookup + post_quant_conv + decoder; images/s over all batches but the first (warm-up)",
}


PREPROCESSING_NOTES = {
    "shorter-side": "shorter side resized with PIL bicubic (antialiased), longer side truncated, centre crop "
    "with a rounded offset (vqgan-lc's rule)",
    "official": "albumentations SmallestMaxSize + CenterCrop as the official evaluation: OpenCV INTER_LINEAR "
    "without antialias, both sides rounded, crop offset floored",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Accumulates (images, seconds) per batch; the rate leaves out the first batch when there are more."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.batches: list[tuple[int, float]] = []

    def __call__(self, fn: Callable[[], torch.Tensor], n: int) -> torch.Tensor:
        _sync(self.device)
        t = time.perf_counter()
        out = fn()
        _sync(self.device)
        self.batches.append((n, time.perf_counter() - t))
        return out

    def entry(self, batch_size: int) -> dict[str, Any]:
        timed = self.batches[1:] if len(self.batches) > 1 else self.batches
        n, s = sum(b[0] for b in timed), sum(b[1] for b in timed)
        return computed(n / s if s > 0 else float("nan"), unit="images/s", images_timed=n, seconds=s,
                        batch_size=batch_size, device=str(self.device),
                        note=f"model only, batch {batch_size}, {self.device}, {n} images timed")


def _named_weights(value: str | None, role: CheckpointRole, option: str, have_data: bool) -> str | None:
    """A weights option -> a local file: a path as is, a standard name from (or fetched into) the torch hub
    cache, nothing given -> the cached standard file if there is one (``vqgan_lc.named_weights``)."""
    if not have_data:
        return value
    from ..named_weights import resolve_checkpoint

    path = resolve_checkpoint(value, role, option=option)
    return None if path is None else str(path)


def _build_optional(name: str, option: str, path: str | None, have_data: bool, build: Callable[[], Any]) -> tuple[Any, dict | None]:
    """(metric object, None) or (None, not-computed entry) when the weights or the originals are missing."""
    if not have_data:
        return None, not_computed(f"{name} needs the original images; token mode without --data", "--data FOLDER")
    if path is None:
        from ..named_weights import checkpoints_dir

        return None, not_computed(f"no {name} weights given and none in the torch hub cache {checkpoints_dir()} "
                                  "(nothing is downloaded unless named)", f"{option} PATH")
    try:
        return build(), None
    except MissingWeightsError as e:
        return None, not_computed(str(e), f"{option} PATH")


def evaluate(
    model: VQGANLC | str | os.PathLike,
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    tokens: str | os.PathLike | None = None,
    file_list: str | os.PathLike | None = None,
    options: EvaluateOptions | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` over the images under ``data`` (or the ids in ``tokens``); write the report to ``out``.

    Returns the report (the content of ``report.json``).

    Raises:
        TokenFormatError: ``tokens`` was made by another model (unless ``options.force``).
        EvaluateError: no readable image, or an image size that does not fit the tokens.
        CheckpointError: a weights file exists but is not the expected network.
    """
    from ..tokens import TokenFormatError, check_compatible, open_tokens

    opts = options or EvaluateOptions()
    model_label = "(in-memory model)" if isinstance(model, VQGANLC) else str(model)
    if not isinstance(model, VQGANLC):
        model = VQGANLC.from_pretrained(model, map_location=device or "cpu")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    f = model.downsample_factor

    # ---------------------------------------------------------------- what to evaluate
    mode: EvaluateMode = "tokens" if tokens is not None else "images"
    tok = None
    images: ImageSource | None = None
    if mode == "tokens":
        tok = open_tokens(tokens)  # type: ignore[arg-type]
        problems = check_compatible(tok.manifest, model)
        if problems and not opts.force:
            raise TokenFormatError(
                f"{tokens} was not made by this model ({'; '.join(problems)}); pass --force to evaluate anyway"
            )
        for p in problems:
            log.warning("evaluating despite: %s", p)
        size = int(tok.manifest["preprocessing"]["image_size"])
        if opts.image_size is not None and opts.image_size != size:
            raise EvaluateError(f"{tokens} was encoded at {size} px; drop --image-size or pass --image-size {size}")
        if data is not None and source_kind(data) != "folder":
            src = open_source(data)  # the rows' originals, found by their keys
            where = {k: i for i, k in enumerate(src.paths)}
            missing = [p for p in tok.paths if p not in where]
            if missing:
                raise ImageSourceError(f"{data} has no item {missing[0]!r} of {tokens}; pass the --data it was encoded from")
            images = src.subset([where[p] for p in tok.paths])
        elif data is not None:
            if not Path(data).is_dir():
                raise ImageSourceError(f"image folder {data} does not exist or is not a folder; check --data")
            images = ImageList(root=Path(data), paths=tuple(tok.paths), labels=tuple(int(x) for x in tok.labels),
                               classes=tuple(tok.manifest.get("classes", ())))
    else:
        if data is None:
            raise EvaluateError("pass --data FOLDER (images to encode) or --tokens DIR (ids to decode)")
        size = opts.image_size or model.config.resolution
        images = open_source(data, file_list)
    resize: ResizeRule = "official" if opts.protocol == "official" else "shorter-side"
    if tok is not None:  # the originals are prepared as the tokens' images were
        resize = "official" if tok.manifest["preprocessing"].get("resize") == "official" else "shorter-side"
        if resize != ("official" if opts.protocol == "official" else "shorter-side"):
            log.warning("the %s protocol resizes with the %s rule, but %s was encoded with the %s rule; the "
                        "originals follow the tokens", opts.protocol, "official" if opts.protocol == "official"
                        else "shorter-side", tokens, resize)
    if size % f:
        raise ImageShapeError(f"image size {size} is not a multiple of the downsampling factor {f}; use e.g. {size // f * f}")
    grid = model.latent_shape(size, size)
    have_data = images is not None

    # ---------------------------------------------------------------- metric objects
    convention: LPIPSConvention = opts.lpips_convention or "lpips"  # resolved by EvaluateOptions
    lpips_nets: dict[str, LPIPSMetric] = {}
    skipped_metrics: dict[str, dict] = {}
    for net, path, option in (("alex", opts.lpips_alex_weights, "--lpips-alex-weights"),
                              ("vgg", opts.lpips_vgg_weights, "--lpips-vgg-weights")):
        path = _named_weights(path, "lpips-alex" if net == "alex" else "lpips-vgg", option, have_data)
        metric, entry = _build_optional(
            f"LPIPS ({'AlexNet' if net == 'alex' else 'VGG16'})", option, path, have_data,
            lambda net=net, path=path: LPIPSMetric(net, path, convention=convention).to(dev),  # type: ignore[misc]
        )
        if metric is not None:
            lpips_nets[net] = metric
        else:
            skipped_metrics[f"lpips_{net}"] = entry  # type: ignore[assignment]
    official = opts.protocol == "official"
    fid = clean_features = None
    fid_entry: dict | None = None
    if not official:
        inception = _named_weights(opts.inception_weights, "inception", "--inception-weights", have_data)
        fid, fid_entry = _build_optional("rFID (Inception-v3)", "--inception-weights", inception, have_data,
                                         lambda: build_fid(inception, device=dev))  # type: ignore[arg-type]
    elif not have_data:
        fid_entry = not_computed("rFID needs the original images; token mode without --data", "--data FOLDER")
    elif not isinstance(images, ImageList):
        fid_entry = not_computed("the official rFID compares against the original image files; --data is not an "
                                 "image folder", "--data FOLDER")
    else:
        try:
            clean_features = clean_fid_mod.cleanfid_feature_model(opts.cleanfid_inception, dev)
        except (MissingWeightsError, MissingDependencyError) as e:
            fid_entry = not_computed(str(e), "--cleanfid-inception PATH")
    png_dir = Path(out) / OFFICIAL_RECONSTRUCTIONS
    rec_pngs: list[Path] = []
    ref_files: list[Path] = []

    # ---------------------------------------------------------------- the pass
    usage = CodebookUsage(model.codebook_size, device=dev)
    enc_timer, dec_timer = _Timer(dev), _Timer(dev)
    per_image: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    grid_orig: list[torch.Tensor] = []
    grid_rec: list[torch.Tensor] = []
    decoded = 0

    def consume(paths: list[str], x: torch.Tensor | None, ids: torch.Tensor) -> None:
        nonlocal decoded
        ids = ids.to(dev)
        rec = dec_timer(lambda: model.decode(ids), len(ids))
        decoded += len(ids)
        if len(grid_rec) < GRID_IMAGES:
            k = GRID_IMAGES - len(grid_rec)
            grid_rec.extend(to_uint8(rec[:k]).cpu())
            if x is not None:
                grid_orig.extend(to_uint8(x[:k]).cpu())
        if x is None:
            return
        ref01, rec01 = to_unit(x), to_unit(rec)
        cols = {"psnr_rgb": psnr(rec01, ref01, channel="rgb"), "psnr_y": psnr(rec01, ref01, channel="y"),
                "ssim": ssim(rec01, ref01)}
        for net, metric in lpips_nets.items():
            cols[f"lpips_{net}"] = metric(x, rec)
        for i, p in enumerate(paths):
            per_image.append({"path": p, **{k: float(v[i]) for k, v in cols.items()}})
        if fid is not None:
            fid.update(to_uint8(x), real=True)
            fid.update(to_uint8(rec), real=False)
        if clean_features is not None:  # official: PNGs of the reconstructions vs the uncropped originals
            assert isinstance(images, ImageList)
            names = [png_dir / Path(p).with_suffix(".png") for p in paths]
            clean_fid_mod.save_png_truncated(rec, names)
            rec_pngs.extend(names)
            ref_files.extend(images.root / p for p in paths)

    bar = Progress(len(images) if images is not None else len(tok), "evaluate", enabled=progress)  # type: ignore[arg-type]
    with torch.inference_mode():
        if images is not None:
            loader = torch.utils.data.DataLoader(
                ImageDataset(images, Preprocessing(size, resize=resize)), batch_size=opts.batch_size, shuffle=False,
                num_workers=opts.num_workers, collate_fn=collate, pin_memory=dev.type == "cuda",
            )
            for batch in loader:
                for i, reason in batch.failed:
                    log.warning("skipped %s: %s", images.paths[i], reason)
                    skipped.append({"path": images.paths[i], "reason": reason})
                if tok is not None:  # token mode: every stored row counts for usage, readable original or not
                    rows = sorted(batch.indices + [i for i, _ in batch.failed])
                    usage.update(torch.from_numpy(tok[rows].astype(np.int64)))
                if batch.images is not None:
                    x = batch.images.to(dev, non_blocking=True)
                    if tok is not None:
                        ids = torch.from_numpy(tok[batch.indices].astype(np.int64))
                    else:
                        ids = enc_timer(lambda x=x: model.encode(x), len(x))  # type: ignore[misc]
                        usage.update(ids)
                    consume([images.paths[i] for i in batch.indices], x, ids)
                bar.update(len(batch.indices) + len(batch.failed))
        else:
            for s in range(0, len(tok), opts.batch_size):  # type: ignore[arg-type]
                ids = torch.from_numpy(tok[s : s + opts.batch_size].astype(np.int64))  # type: ignore[index]
                usage.update(ids)
                consume([], None, ids)
                bar.update(len(ids))
    bar.close()
    # One process sees the whole split, so the histogram is complete without usage.sync().
    if have_data and not per_image:
        raise EvaluateError(f"no readable image under {data} ({len(skipped)} skipped); nothing to evaluate")

    # ---------------------------------------------------------------- the report
    metrics: dict[str, dict] = {}
    n_img = len(per_image)
    for key, unit in (("psnr_y", "dB"), ("psnr_rgb", "dB"), ("ssim", None)):
        if have_data:
            v = np.array([r[key] for r in per_image])
            metrics[key] = computed(v.mean(), std=float(v.std()), num_images=n_img, **({"unit": unit} if unit else {}),
                                    note=f"mean of {n_img} images")
        else:
            metrics[key] = not_computed("needs the original images; token mode without --data", "--data FOLDER")
    for net in ("alex", "vgg"):
        key = f"lpips_{net}"
        if net in lpips_nets:
            v = np.array([r[key] for r in per_image])
            metrics[key] = computed(v.mean(), std=float(v.std()), num_images=n_img, convention=opts.lpips_convention,
                                    note=f"mean of {n_img} images, '{opts.lpips_convention}' input convention")
        else:
            metrics[key] = skipped_metrics[key]
    if fid is None and clean_features is None:
        metrics["rfid"] = fid_entry  # type: ignore[assignment]
    elif n_img < 2:
        metrics["rfid"] = not_computed("FID needs at least 2 images")
    elif clean_features is not None:
        value = clean_fid_mod.clean_fid(rec_pngs, ref_files, feature_model=clean_features, device=dev,
                                        batch_size=opts.batch_size, num_workers=opts.num_workers)
        metrics["rfid"] = computed(value, num_images=n_img, implementation=clean_fid_mod.CLEANFID_IMPLEMENTATION,
                                   reconstructions=str(png_dir), note=f"{n_img} images, clean-fid 'clean' vs the "
                                   "uncropped originals; compare only at equal counts")
    else:
        assert fid is not None
        metrics["rfid"] = computed(float(fid.compute()), num_images=n_img, implementation=FID_IMPLEMENTATION,
                                   note=f"{n_img} images; FID is biased upwards below ~10k images, compare only at "
                                   "equal counts")
    n_tok = int(usage.counts.sum())
    util_note = f"{usage.used:,} of {model.codebook_size:,} codes over {n_tok:,} tokens"
    if n_tok < model.codebook_size:
        util_note += " (fewer tokens than codes: 100% is unreachable)"
    metrics["utilization"] = computed(usage.utilization, used=usage.used, codebook_size=model.codebook_size,
                                      tokens=n_tok, note=util_note)
    metrics["perplexity"] = computed(usage.perplexity, max=model.codebook_size,
                                     note=f"exp(entropy) of the id histogram; at most {model.codebook_size:,}")
    if mode == "images":
        metrics["encode_throughput"] = enc_timer.entry(opts.batch_size)
    else:
        metrics["encode_throughput"] = not_computed("token mode decodes the stored ids; nothing is encoded",
                                                    "--data FOLDER without --tokens")
    metrics["decode_throughput"] = dec_timer.entry(opts.batch_size)

    notes = IMPLEMENTATION_NOTES | {"lpips": IMPLEMENTATION_NOTES["lpips"] + _lpips_note(opts.lpips_convention)}  # type: ignore[arg-type]
    notes["preprocessing"] = PREPROCESSING_NOTES[resize]
    if official:
        notes["rfid"] = clean_fid_mod.CLEANFID_IMPLEMENTATION
    report = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "protocol": opts.protocol,
        "model": {"path": model_label, "quantizer": model.config.quantizer.kind, "codebook_size": model.codebook_size,
                  "downsample_factor": f, "config_hash": model.config_hash(), "inference_only": model.inference_only},
        "data": {"path": str(data) if data is not None else None, "mode": mode,
                 "tokens": str(tokens) if tokens is not None else None,
                 "file_list": str(file_list) if file_list is not None else None, "images": n_img if have_data else decoded,
                 "skipped": len(skipped), "skipped_files": skipped, "image_size": size, "resize": resize,
                 "grid": list(grid),
                 "tokens_counted": n_tok},
        "metrics": metrics,
        "options": {**asdict(opts), "device": str(dev)},
        "implementation": notes,
    }
    per_image_cols = [c for c in ("psnr_rgb", "psnr_y", "ssim", "lpips_alex", "lpips_vgg")
                      if per_image and c in per_image[0]]
    report = write_report(
        out, report, per_image=per_image, per_image_columns=per_image_cols, counts=usage.counts,
        reconstructions=torch.stack(grid_rec) if grid_rec else None,
        originals=torch.stack(grid_orig) if grid_orig else None,
    )
    log.info("evaluated %d images (%d skipped) -> %s", n_img if have_data else decoded, len(skipped), out)
    return report


def _lpips_note(convention: LPIPSConvention) -> str:
    if convention == "lpips":
        return "; inputs in [-1, 1], reconstruction clamped (the lpips authors' convention)"
    return ("; 'official' convention: unclamped reconstruction and pyiqa's normalize=True applied to [-1, 1] "
            "tensors (inputs end in [-3, 1]), as VQGAN-LC's eval_reconstruction.py")


__all__ = ["PROTOCOLS", "EvaluateError", "EvaluateMode", "EvaluateOptions", "Protocol", "evaluate"]
