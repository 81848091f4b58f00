"""The paper's utilization claim (Table 2) at small scale: VQ, VQGAN-FC, VQGAN-EMA and VQGAN-LC side by side.

The same small backbone (taming encoder/decoder, ch 32, ch_mult (1, 1, 2), f4: 32 px crops -> 8x8 tokens,
D' = 8) is trained from the same initial weights, on the same sequence of batches, for the same number
of steps, with each quantizer at each codebook size. Training is plain PyTorch: Adam (betas 0.5, 0.9, as
the official code), linear warm-up then half-cycle cosine, loss = L1 + rate_q * (1.0 commit + 0.33
codebook) with the official rate_q = 0.1, the same for every quantizer. No LPIPS and no GAN: they are
not needed to see codebook collapse and would dominate the CPU time.

Data: 15 photographs bundled with scikit-image (7 colour, 8 greyscale). The right quarter of every
photograph is held out; training crops come from the left three quarters only. The LC codebook is
built like the paper's (k-means per class, here per photograph, k proportional to its patches) over
pixel-patch features (4x4x3 = 48-d, one per token position) of random *training* crops.

Utilization = distinct ids over all held-out tokens / N. The held-out set has 4,096 crops = 262,144
tokens by default, 2.6x the largest codebook, so full use is reachable (with tokens spread uniformly
over the codes, 1 - e^-2.6 = 93% would be hit; the JSON also gives the utilization over 1/8, 1/4 and
1/2 of the tokens, to see whether it still rises). The utilization of the first ``--curve-crops``
held-out crops is also tracked at 0, 25, 50, 75 and 100% of the training steps. PSNR (Y and RGB) and
SSIM are measured on the first ``--psnr-crops`` held-out crops with ``vqgan_lc.metrics``.

One torch thread by default: on a 2-core machine shared with other jobs, two OpenMP threads spin-wait
for each other and a step runs about 8x slower.

    python benchmarks/utilization.py                    # 4 quantizers x {1024, 16384, 100000}
    python benchmarks/utilization.py --quick            # fewer steps and held-out crops
    python benchmarks/utilization.py --sizes 1024,100000 --steps 200 --quantizers vq,lc
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_json

COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
GREY_PHOTOS = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon")
HOLDOUT_FRACTION = 0.25
CROP = 32
PATCH = 4  # = the backbone's downsampling factor: one pixel-patch vector per token position
QUANTIZERS = ("vq", "fc", "ema", "lc")
LABELS = {"vq": "VQ (trainable)", "fc": "VQGAN-FC", "ema": "VQGAN-EMA", "lc": "VQGAN-LC"}


# ----------------------------------------------------------------------------------------- data
def load_photos() -> list[tuple[str, np.ndarray]]:
    """The photographs as (H, W, 3) uint8 (greyscale ones replicated to three channels)."""
    import skimage.data

    out = []
    for name in COLOR_PHOTOS + GREY_PHOTOS:
        a = getattr(skimage.data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        out.append((name, np.ascontiguousarray(a)))
    return out


def split(photos: Sequence[tuple[str, np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Left three quarters (train) and right quarter (held out) of every photograph."""
    train, held = [], []
    for _, a in photos:
        cut = int(round(a.shape[1] * (1 - HOLDOUT_FRACTION)))
        train.append(a[:, :cut])
        held.append(a[:, cut:])
    return train, held


def crops(regions: Sequence[np.ndarray], n: int, rng: np.random.Generator, size: int = CROP) -> torch.Tensor:
    """``n`` random ``size``-px crops, a photograph drawn uniformly per crop -> (n, 3, size, size) in [-1, 1]."""
    which = rng.integers(0, len(regions), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, r in enumerate(which):
        a = regions[r]
        y = rng.integers(0, a.shape[0] - size + 1)
        x = rng.integers(0, a.shape[1] - size + 1)
        out[i] = a[y : y + size, x : x + size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------------------- models
def backbone(kind: str, size: int, codebook: torch.Tensor | None = None):  # noqa: ANN201
    """The benchmark backbone with a fresh quantizer; weights drawn after ``torch.manual_seed`` by the caller."""
    from vqgan_lc import get_config
    from vqgan_lc.model import VQGANLC

    cfg = get_config(
        "tiny", ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=64, resolution=CROP,
        embed_dim=8, quantizer={"kind": kind, "codebook_size": size},
    )
    return VQGANLC.from_config(cfg, codebook=codebook)


def lc_codebook(train_regions: Sequence[np.ndarray], size: int, n_crops: int, seed: int, niter: int) -> tuple[torch.Tensor, float]:
    """k-means per photograph over 48-d pixel-patch features of ``n_crops`` training crops; ``size`` centres in all."""
    from vqgan_lc.codebook import kmeans
    from vqgan_lc.extractors import PixelExtractor

    t0 = time.perf_counter()
    ext = PixelExtractor(patch_size=PATCH, image_size=CROP)
    rng = np.random.default_rng(seed + 1)
    per_photo = []
    for r, region in enumerate(train_regions):
        m = n_crops // len(train_regions) + (r < n_crops % len(train_regions))
        x = crops([region], m, rng)
        per_photo.append(ext(x).reshape(-1, 3 * PATCH * PATCH).numpy())
    counts = np.array([len(v) for v in per_photo])
    if counts.sum() < size:
        raise SystemExit(f"{counts.sum()} patch vectors cannot make {size} centres; raise --codebook-crops")
    # Largest-remainder split of `size` proportional to each photograph's patches.
    share = counts / counts.sum() * size
    k = np.floor(share).astype(int)
    k[np.argsort(-(share - k))[: size - k.sum()]] += 1
    parts = []
    for r, (v, kc) in enumerate(zip(per_photo, k)):
        if kc:
            parts.append(kmeans(v, int(kc), niter=niter, seed=seed * 1000 + r, memory_check=False).centroids)
    return torch.from_numpy(np.concatenate(parts)), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------- train / eval
def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(model, train_regions, *, steps: int, batch: int, lr: float, rate_q: float, seed: int,  # noqa: ANN001
          probe: torch.Tensor | None = None) -> dict:
    """Adam on L1 + rate_q * quantizer loss. Every run sees the same batches (the data RNG is reseeded).

    ``probe``: held-out crops whose utilization is measured at 0, 25, 50, 75 and 100% of the steps.
    """
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9), eps=1e-7)
    warmup = max(1, steps // 20)
    tail = max(1, steps // 10)  # the last 10% of the steps: training-stream utilization
    seen = torch.zeros(model.codebook_size, dtype=torch.long)
    l1s = []
    curve: list[tuple[int, float]] = []
    marks = {round(steps * q) for q in (0.25, 0.5, 0.75)}
    if probe is not None:
        curve.append((0, probe_util(model, probe)))
    model.train()
    t0 = time.perf_counter()
    probe_seconds = 0.0
    for step in range(steps):
        if probe is not None and step in marks:
            t = time.perf_counter()
            curve.append((step, probe_util(model, probe)))
            model.train()
            probe_seconds += time.perf_counter() - t
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x = crops(train_regions, batch, rng)
        out = model(x)
        l1 = (out.reconstruction - x).abs().mean()
        loss = l1 + rate_q * out.quantizer.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - tail:
            seen += out.quantizer.counts
            l1s.append(float(l1.detach()))
    model.eval()
    if probe is not None:
        curve.append((steps, probe_util(model, probe)))
    return {"train_seconds": time.perf_counter() - t0 - probe_seconds, "train_l1": float(np.mean(l1s)),
            "train_util": float((seen > 0).float().mean()), "train_tokens": int(seen.sum()), "curve": curve}


@torch.inference_mode()
def probe_util(model, x: torch.Tensor, batch: int = 512) -> float:  # noqa: ANN001
    """Distinct ids over the crops ``x`` / N (the model is left in eval mode)."""
    model.eval()
    seen = torch.zeros(model.codebook_size, dtype=torch.bool)
    for i in range(0, len(x), batch):
        seen[model.encode(x[i : i + batch]).flatten()] = True
    return float(seen.float().mean())


@torch.inference_mode()
def evaluate(model, held: torch.Tensor, psnr_crops: int, batch: int = 512) -> dict:  # noqa: ANN001
    """Utilization/perplexity over all held-out crops; PSNR (Y, RGB) and SSIM over the first ``psnr_crops``."""
    from vqgan_lc.metrics import psnr, ssim, to_unit
    from vqgan_lc.quantize import CodebookUsage

    usage = CodebookUsage(model.codebook_size)
    p_y, p_rgb, s = [], [], []
    prefixes = {max(1, len(held) * k // 8): k / 8 for k in (1, 2, 4)}  # crops -> fraction of the held-out set
    by_fraction = {}
    t0 = time.perf_counter()
    for i in range(0, len(held), batch):
        x = held[i : i + batch]
        ids = model.encode(x)
        for n, frac in prefixes.items():  # utilization with fewer tokens: is it still rising at 100%?
            if i < n <= i + len(x):
                part = torch.bincount(ids[: n - i].flatten(), minlength=model.codebook_size)
                by_fraction[frac] = float(((usage.counts + part) > 0).float().mean())
        usage.update(ids)
        if i < psnr_crops:
            n = min(len(x), psnr_crops - i)
            ref, rec = to_unit(x[:n]), to_unit(model.decode(ids[:n]))
            p_y.append(psnr(rec, ref, channel="y"))
            p_rgb.append(psnr(rec, ref, channel="rgb"))
            s.append(ssim(rec, ref))
    by_fraction[1.0] = usage.utilization
    return {"util": usage.utilization, "used": usage.used, "perplexity": usage.perplexity,
            "util_by_token_fraction": by_fraction, "geometry": geometry(model, held[:psnr_crops]),
            "eval_tokens": int(usage.counts.sum()), "psnr_y": float(torch.cat(p_y).mean()),
            "psnr_rgb": float(torch.cat(p_rgb).mean()), "ssim": float(torch.cat(s).mean()),
            "eval_seconds": time.perf_counter() - t0}


@torch.inference_mode()
def geometry(model, x: torch.Tensor) -> dict:  # noqa: ANN001
    """Where the latents and the codes lie (in the space the search runs in: unit vectors for FC).

    A code far outside the cloud of latents is never anyone's nearest code; these numbers say whether
    the codebook and the encoder's latents have drifted apart (collapse) or overlap (high use).
    """
    import torch.nn.functional as F

    q = model.quantize
    z = model.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, q.embed_dim).float()
    codes = q.search_table()
    if q.distance == "cosine":
        z = F.normalize(z, dim=1)
    ids = model.quantize(model.encode_latents(x)).ids.flatten()
    lo, hi = z.min(0).values, z.max(0).values
    inside = ((codes >= lo) & (codes <= hi)).all(1).float().mean()
    return {"latent_rms": float(z.pow(2).mean().sqrt()), "latent_std": float(z.std(0).mean()),
            "code_rms": float(codes.pow(2).mean().sqrt()), "code_std": float(codes.std(0).mean()),
            "codes_inside_latent_box": float(inside), "quant_mse": float((z - codes[ids]).pow(2).mean())}


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="sizes 1024,100000, 60 steps, 1,600 held-out crops (102,400 tokens)")
    ap.add_argument("--sizes", help="comma-separated codebook sizes (default 1024,16384,100000)")
    ap.add_argument("--quantizers", default=",".join(QUANTIZERS), help="comma-separated subset of vq,fc,ema,lc")
    ap.add_argument("--steps", type=int, help="training steps per run (default 200; 60 with --quick)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rate-q", type=float, default=0.1, help="weight of the quantizer loss (official default 0.1)")
    ap.add_argument("--eval-crops", type=int, help="held-out 32 px crops (default 4096; 1600 with --quick)")
    ap.add_argument("--psnr-crops", type=int, default=512, help="held-out crops decoded for PSNR/SSIM")
    ap.add_argument("--curve-crops", type=int, default=1024,
                    help="held-out crops whose utilization is tracked during training (0: off)")
    ap.add_argument("--codebook-crops", type=int, default=2560, help="training crops whose patches k-means clusters")
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine more threads spin-wait and run ~8x slower)")
    ap.add_argument("--json", help="output JSON (default benchmarks/results/utilization.json)")
    a = ap.parse_args()
    steps = a.steps or (60 if a.quick else 200)
    eval_crops = a.eval_crops or (1600 if a.quick else 4096)
    sizes = [int(s) for s in (a.sizes or ("1024,100000" if a.quick else "1024,16384,100000")).split(",") if s]
    kinds = [k for k in a.quantizers.split(",") if k]
    if set(kinds) - set(QUANTIZERS):
        raise SystemExit(f"unknown quantizers {set(kinds) - set(QUANTIZERS)}; choose from {QUANTIZERS}")
    torch.set_num_threads(a.threads)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    t_all = time.perf_counter()

    photos = load_photos()
    train_regions, held_regions = split(photos)
    held = crops(held_regions, eval_crops, np.random.default_rng(10_000 + a.seed))
    print(f"{len(photos)} photographs; held-out: {eval_crops} crops = {eval_crops * (CROP // PATCH) ** 2:,} tokens; "
          f"{steps} steps x batch {a.batch_size}", flush=True)

    rows, runs = [], []
    for size in sizes:
        codebook, cb_seconds = None, 0.0
        if "lc" in kinds:
            codebook, cb_seconds = lc_codebook(train_regions, size, a.codebook_crops, a.seed, a.kmeans_iters)
            print(f"N={size}: LC codebook {tuple(codebook.shape)} by per-photo k-means in {cb_seconds:.0f}s", flush=True)
        for kind in kinds:
            torch.manual_seed(a.seed)  # the same encoder/decoder initialisation for every quantizer
            model = backbone(kind, size, codebook if kind == "lc" else None)
            probe = held[: a.curve_crops] if a.curve_crops else None
            tr = train(model, train_regions, steps=steps, batch=a.batch_size, lr=a.lr, rate_q=a.rate_q, seed=a.seed,
                       probe=probe)
            ev = evaluate(model, held, a.psnr_crops)
            run = {"quantizer": kind, "codebook_size": size, **tr, **ev,
                   "codebook_seconds": cb_seconds if kind == "lc" else 0.0}
            runs.append(run)
            rows.append({"quantizer": LABELS[kind], "N": size, "util %": 100 * ev["util"], "used": ev["used"],
                         "perplexity": ev["perplexity"], "train util %": 100 * tr["train_util"],
                         "PSNR-Y": ev["psnr_y"], "PSNR-RGB": ev["psnr_rgb"], "SSIM": ev["ssim"],
                         "train s": tr["train_seconds"]})
            curve = " ".join(f"{st}:{100 * u:.1f}%" for st, u in tr["curve"])
            print(f"  {LABELS[kind]:<15} N={size:<6} util {100 * ev['util']:6.2f}%  ppl {ev['perplexity']:9.1f}  "
                  f"PSNR-Y {ev['psnr_y']:.2f}  SSIM {ev['ssim']:.3f}  ({tr['train_seconds']:.0f}s train)  "
                  f"probe util by step {curve}", flush=True)
    total = time.perf_counter() - t_all
    print()
    print_table(rows, ["quantizer", "N", "util %", "used", "perplexity", "train util %", "PSNR-Y", "PSNR-RGB", "SSIM", "train s"])
    print(f"\ntotal {total / 60:.1f} min")
    write_json("utilization", {
        "settings": {"steps": steps, "batch_size": a.batch_size, "lr": a.lr, "rate_q": a.rate_q, "crop": CROP,
                     "patch": PATCH, "eval_crops": eval_crops, "eval_tokens": eval_crops * (CROP // PATCH) ** 2,
                     "psnr_crops": a.psnr_crops, "curve_crops": a.curve_crops, "codebook_crops": a.codebook_crops,
                     "kmeans_iters": a.kmeans_iters, "threads": a.threads,
                     "seed": a.seed, "quick": a.quick, "photos": [n for n, _ in photos],
                     "holdout": f"right {HOLDOUT_FRACTION:.0%} of every photograph",
                     "backbone": "ch 32, ch_mult (1,1,2), 1 res block, z 64, D'=8, f4, 32 px"},
        "runs": runs, "total_seconds": total,
    }, a.json)


if __name__ == "__main__":
    main()
