"""The paper's utilization claim (Table 2) at small scale, measured as the paper measures it.

The same small backbone (taming encoder/decoder, ch 32, 1 res block, z 64, D' = 8; f4: 32 px crops
-> 8x8 tokens, or f8: 64 px crops -> 8x8 tokens) is trained from the same initial weights, on the same
sequence of batches, for the same number of steps, with each quantizer (plain trainable VQ, VQGAN-FC,
VQGAN-EMA, VQGAN-LC) at each codebook size. Training is plain PyTorch: Adam (betas 0.5, 0.9, as the
official code), loss = L1 + rate_q * (1.0 commit + 0.33 codebook) with the official rate_q = 0.1, the
same for every quantizer. No LPIPS and no GAN (no pretrained weights offline; they would dominate the
CPU time).

Data: 15 photographs bundled with scikit-image (7 colour, 8 greyscale), never noise. The right quarter of
every photograph is held out; training crops come from the left three quarters only. The LC codebook is
built like the paper's (k-means per class, here per photograph, k proportional to its patches) over
pixel-patch features (f x f x 3 values, one per token position) of random training crops.

What is measured (the redesign follows the nine hypotheses of the fidelity audit):

* **Utilization over training tokens** (the paper's Table 2 counts the codes used on the data the
  tokenizer was trained on): distinct ids / N of the final model over fresh random crops of the
  training region, ``--tokens-per-code`` (default 64, at least 32) tokens per code, and the same over
  as many held-out tokens. Also at 1/8, 1/4 and 1/2 of the tokens: is the number still rising?
* **The no-model ceiling**: the LC codebook's own hit rate on the same patches in feature space
  (nearest k-means centre of every evaluation patch, counted like the model's ids).
* The utilization of ``--curve-crops`` training crops at 0, 25, 50, 75 and 100% of the steps, where
  the latents and codes lie (``geometry``), PSNR (Y and RGB) and SSIM on held-out crops.

The knobs the hypotheses name are options: ``--schedule`` (constant lr after warm-up, or the official
half-cycle cosine that reaches 0 at the end of the run), ``--codebook-std`` (centre the LC codebook
and scale it to this std, as ``codebook_std`` in the model config; ``none`` = the k-means centres as
they are), ``--projector-lr-mult``, ``--batch-size`` (tokens per step), ``--factor`` (f4 or f8),
``--tokens-per-code``.

``--check`` runs the N = 1,024 VQGAN-LC and VQ rows and exits with status 1 when a target fails
(VQGAN-LC >= 95% at N = 1,024 and >= 90% at N = 16,384, plain VQ <= 10%, over training tokens).

One torch thread by default: on a 2-core machine shared with other jobs, two OpenMP threads spin-wait
for each other and a step runs about 8x slower.

    python benchmarks/utilization.py --check            # N = 1,024: LC and VQ against their targets
    python benchmarks/utilization.py                    # 4 quantizers x {1024, 16384}
    python benchmarks/utilization.py --sizes 1024 --quantizers lc --schedule cosine   # one hypothesis
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_json

if TYPE_CHECKING:
    from vqgan_lc.model import VQGANLC

COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
GREY_PHOTOS = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon")
HOLDOUT_FRACTION = 0.25
GRID = 8  # tokens per side of every crop: f4 -> 32 px crops, f8 -> 64 px crops
QuantizerKind = Literal["vq", "fc", "ema", "lc"]
QUANTIZERS: tuple[QuantizerKind, ...] = get_args(QuantizerKind)
LABELS = {"vq": "VQ (trainable)", "fc": "VQGAN-FC", "ema": "VQGAN-EMA", "lc": "VQGAN-LC"}
Schedule = Literal["constant", "cosine"]
Factor = Literal[4, 8]
MIN_TOKENS_PER_CODE = 32


@dataclass(frozen=True)
class Target:
    """A claim of the paper's Table 2 at small scale: utilization over training tokens vs a bound."""

    quantizer: QuantizerKind
    codebook_size: int
    bound: float
    at_least: bool  # True: utilization >= bound; False: utilization <= bound

    def passed(self, utilization: float) -> bool:
        return utilization >= self.bound if self.at_least else utilization <= self.bound

    def describe(self) -> str:
        return f"{LABELS[self.quantizer]} N={self.codebook_size:,}: {'>=' if self.at_least else '<='} {self.bound:.0%}"


TARGETS = (
    Target("lc", 1024, 0.95, True),
    Target("lc", 16384, 0.90, True),
    Target("vq", 1024, 0.10, False),
    Target("vq", 16384, 0.10, False),
)


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


def crops(regions: Sequence[np.ndarray], n: int, rng: np.random.Generator, size: int = 32) -> torch.Tensor:
    """``n`` random ``size``-px crops, a photograph drawn uniformly per crop -> (n, 3, size, size) in [-1, 1]."""
    which = rng.integers(0, len(regions), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, r in enumerate(which):
        a = regions[r]
        y = rng.integers(0, a.shape[0] - size + 1)
        x = rng.integers(0, a.shape[1] - size + 1)
        out[i] = a[y : y + size, x : x + size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def crops_for(size: int, tokens_per_code: float) -> int:
    """Crops (of GRID x GRID tokens) that give at least ``tokens_per_code`` tokens per code of ``size``."""
    return max(1, math.ceil(size * tokens_per_code / GRID**2))


def patch_features(x: torch.Tensor, factor: int) -> np.ndarray:
    """One ``factor x factor x 3`` pixel-patch vector per token position of ``x`` -> (n * GRID^2, 3 f^2) float32."""
    from vqgan_lc.extractors import PixelExtractor

    ext = PixelExtractor(patch_size=factor, image_size=x.shape[-1])
    return np.ascontiguousarray(ext(x).reshape(-1, 3 * factor * factor).numpy(), dtype=np.float32)


# ----------------------------------------------------------------------------------------- models
def backbone(kind: QuantizerKind, size: int, codebook: torch.Tensor | None = None, factor: Factor = 4) -> VQGANLC:
    """The benchmark backbone with a fresh quantizer; weights drawn after ``torch.manual_seed`` by the caller."""
    from vqgan_lc import get_config
    from vqgan_lc.model import VQGANLC

    ch_mult = {4: (1, 1, 2), 8: (1, 1, 2, 2)}[factor]
    cfg = get_config(
        "tiny", ch=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(), z_channels=64,
        resolution=GRID * factor, embed_dim=8, quantizer={"kind": kind, "codebook_size": size},
    )
    return VQGANLC.from_config(cfg, codebook=codebook)


def lc_codebook(train_regions: Sequence[np.ndarray], size: int, n_crops: int, seed: int, niter: int,
                factor: Factor = 4) -> tuple[torch.Tensor, float]:
    """k-means per photograph over pixel-patch features of ``n_crops`` training crops; ``size`` centres in all.

    The centres as k-means gives them (in the feature space; ``rescale`` maps them for the model)."""
    from vqgan_lc.codebook import kmeans

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    per_photo = []
    for r, region in enumerate(train_regions):
        m = n_crops // len(train_regions) + (r < n_crops % len(train_regions))
        per_photo.append(patch_features(crops([region], m, rng, GRID * factor), factor))
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


def rescale(codebook: torch.Tensor, std: float | None) -> torch.Tensor:
    """Centre the codebook and scale it to ``std`` (what ``codebook_std`` does in ``vqgan_lc.build``);
    ``None``: unchanged. An affine map of the codebook: the nearest centre of any patch mapped the same
    way does not change, only the projector's effective initialisation does."""
    if std is None:
        return codebook
    centred = codebook - codebook.mean(0, keepdim=True)
    return centred * (std / centred.std().clamp_min(1e-12))


def ceiling(centres: torch.Tensor, patches: np.ndarray, fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)) -> dict[float, float]:
    """The codebook's own hit rate, no model: share of the centres that are the nearest centre (L2, in
    feature space) of at least one of the first ``fraction`` of ``patches``, for each fraction."""
    import faiss

    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres.numpy(), dtype=np.float32))
    _, nearest = index.search(patches, 1)
    nearest = nearest[:, 0]
    return {f: len(np.unique(nearest[: max(1, round(len(nearest) * f))])) / len(centres) for f in fractions}


# ----------------------------------------------------------------------------------------- train / eval
def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: Schedule = "constant") -> float:
    """Linear warm-up over ``warmup`` steps, then ``constant`` (hold ``lr``) or ``cosine`` (the official
    half-cycle cosine: reaches 0 at ``steps``)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(model: VQGANLC, train_regions: Sequence[np.ndarray], *, steps: int, batch: int, lr: float, rate_q: float,
          seed: int, schedule: Schedule = "constant", projector_lr_mult: float = 1.0, factor: Factor = 4,
          probe: torch.Tensor | None = None) -> dict[str, Any]:
    """Adam on L1 + rate_q * quantizer loss. Every run sees the same batches (the data RNG is reseeded).

    ``probe``: crops whose utilization is measured at 0, 25, 50, 75 and 100% of the steps.
    ``projector_lr_mult``: the LC projector's lr relative to the rest of the model.
    """
    rng = np.random.default_rng(seed)
    projection = getattr(model.quantize, "projection", None)
    proj_params = [p for p in projection.parameters() if p.requires_grad] if projection is not None else []
    ids = {id(p) for p in proj_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr_mult": 1.0}] + ([{"params": proj_params, "lr_mult": projector_lr_mult}] if proj_params else [])
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.9), eps=1e-7)
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
            g["lr"] = lr_at(step, steps, lr, warmup, schedule) * g["lr_mult"]
        x = crops(train_regions, batch, rng, GRID * factor)
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
            "stream_util": float((seen > 0).float().mean()), "stream_tokens": int(seen.sum()),
            "final_lr": lr_at(steps - 1, steps, lr, warmup, schedule), "curve": curve}


@torch.inference_mode()
def encode_all(model: VQGANLC, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The ids of every token of the crops ``x``, in crop order (the model is left in eval mode)."""
    model.eval()
    return torch.cat([model.encode(x[i : i + batch]).flatten() for i in range(0, len(x), batch)])


def probe_util(model: VQGANLC, x: torch.Tensor) -> float:
    """Distinct ids over the crops ``x`` / N."""
    return len(torch.unique(encode_all(model, x))) / model.codebook_size


def usage(ids: torch.Tensor, codebook_size: int, fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)) -> dict[str, Any]:
    """Utilization (distinct ids / N) over the first ``fraction`` of ``ids`` for each fraction, the codes
    used and the perplexity over all of them."""
    counts = torch.bincount(ids, minlength=codebook_size)
    p = counts[counts > 0].double() / counts.sum()
    by_fraction = {f: len(torch.unique(ids[: max(1, round(len(ids) * f))])) / codebook_size for f in fractions}
    return {"util": by_fraction[1.0], "used": int((counts > 0).sum()), "tokens": int(counts.sum()),
            "tokens_per_code": float(counts.sum()) / codebook_size,
            "perplexity": float(torch.exp(-(p * p.log()).sum())), "util_by_token_fraction": by_fraction}


@torch.inference_mode()
def reconstruction(model: VQGANLC, x: torch.Tensor) -> dict[str, float]:
    """PSNR (Y, RGB) and SSIM of the crops ``x`` with ``vqgan_lc.metrics``."""
    from vqgan_lc.metrics import psnr, ssim, to_unit

    model.eval()
    ref, rec = to_unit(x), to_unit(model.decode(model.encode(x)))
    return {"psnr_y": float(psnr(rec, ref, channel="y").mean()), "psnr_rgb": float(psnr(rec, ref, channel="rgb").mean()),
            "ssim": float(ssim(rec, ref).mean())}


@torch.inference_mode()
def geometry(model: VQGANLC, x: torch.Tensor) -> dict[str, float]:
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


def check_targets(runs: Sequence[dict[str, Any]]) -> list[tuple[Target, float, bool]]:
    """(target, utilization over training tokens, passed) for every run a target names."""
    out = []
    for t in TARGETS:
        for r in runs:
            if r["quantizer"] == t.quantizer and r["codebook_size"] == t.codebook_size:
                u = r["train_tokens"]["util"]
                out.append((t, u, t.passed(u)))
    return out


# ----------------------------------------------------------------------------------------- main
def _std(value: str) -> float | None:
    if value.lower() in ("none", "raw"):
        return None
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError("--codebook-std must be > 0, or none")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="N = 1,024, VQGAN-LC and VQ only; exit status 1 when a target fails")
    ap.add_argument("--sizes", help="comma-separated codebook sizes (default 1024,16384; 1024 with --check)")
    ap.add_argument("--quantizers", help="comma-separated subset of vq,fc,ema,lc (default all; lc,vq with --check)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run")
    ap.add_argument("--batch-size", type=int, default=16, help="crops per step (x 64 tokens)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=get_args(Schedule), default="constant",
                    help="after the 5%% warm-up: hold the lr, or the official cosine that reaches 0 at the last step")
    ap.add_argument("--projector-lr-mult", type=float, default=1.0, help="LC projector lr / model lr")
    ap.add_argument("--codebook-std", type=_std, default=0.03,
                    help="centre the LC codebook and scale it to this std (none: k-means centres as they are)")
    ap.add_argument("--factor", type=int, choices=get_args(Factor), default=4,
                    help="downsampling: f4 (32 px crops, 48-d patches) or f8 (64 px crops, 192-d patches)")
    ap.add_argument("--rate-q", type=float, default=0.1, help="weight of the quantizer loss (official default 0.1)")
    ap.add_argument("--tokens-per-code", type=float, default=64,
                    help=f"evaluation tokens per code, on training and on held-out crops (>= {MIN_TOKENS_PER_CODE})")
    ap.add_argument("--psnr-crops", type=int, default=512, help="held-out crops decoded for PSNR/SSIM")
    ap.add_argument("--curve-crops", type=int, default=1024,
                    help="training crops whose utilization is tracked during training (0: off)")
    ap.add_argument("--codebook-points", type=float, default=32,
                    help="patch vectors per centre that k-means clusters (at least 163,840 vectors)")
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine more threads spin-wait and run ~8x slower)")
    ap.add_argument("--json", help="output JSON (default benchmarks/results/utilization[_check].json)")
    a = ap.parse_args(argv)
    factor: Factor = a.factor
    crop = GRID * factor
    sizes = [int(s) for s in (a.sizes or ("1024" if a.check else "1024,16384")).split(",") if s]
    kinds = [k for k in (a.quantizers or ("lc,vq" if a.check else ",".join(QUANTIZERS))).split(",") if k]
    if set(kinds) - set(QUANTIZERS):
        raise SystemExit(f"unknown quantizers {set(kinds) - set(QUANTIZERS)}; choose from {QUANTIZERS}")
    if a.tokens_per_code < MIN_TOKENS_PER_CODE:
        print(f"note: {a.tokens_per_code} tokens per code is below {MIN_TOKENS_PER_CODE}: utilization is capped by the "
              "token count, not by the model")
    torch.set_num_threads(a.threads)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    t_all = time.perf_counter()

    photos = load_photos()
    train_regions, held_regions = split(photos)
    print(f"{len(photos)} photographs, f{factor} ({crop} px crops -> {GRID}x{GRID} tokens); {a.steps} steps x batch "
          f"{a.batch_size}, lr {a.lr:g} {a.schedule}; LC codebook std {a.codebook_std}; evaluation "
          f"{a.tokens_per_code:g} tokens per code on training and on held-out crops", flush=True)

    rows, runs, ceilings = [], [], {}
    for size in sizes:
        n_eval = crops_for(size, a.tokens_per_code)
        x_train = crops(train_regions, n_eval, np.random.default_rng(20_000 + a.seed), crop)  # fresh training crops
        x_held = crops(held_regions, n_eval, np.random.default_rng(10_000 + a.seed), crop)
        codebook, cb_seconds = None, 0.0
        if "lc" in kinds:
            n_cb = max(2560, crops_for(size, a.codebook_points))
            centres, cb_seconds = lc_codebook(train_regions, size, n_cb, a.seed, a.kmeans_iters, factor)
            codebook = rescale(centres, a.codebook_std)
            ceilings[size] = {"train": ceiling(centres, patch_features(x_train, factor)),
                              "held_out": ceiling(centres, patch_features(x_held, factor)),
                              "codebook_crops": n_cb, "codebook_seconds": cb_seconds}
            print(f"N={size}: LC codebook {tuple(centres.shape)} by per-photo k-means of {n_cb} crops in "
                  f"{cb_seconds:.0f}s; no-model ceiling {100 * ceilings[size]['train'][1.0]:.1f}% (train) / "
                  f"{100 * ceilings[size]['held_out'][1.0]:.1f}% (held out)", flush=True)
        for kind in kinds:
            torch.manual_seed(a.seed)  # the same encoder/decoder initialisation for every quantizer
            model = backbone(kind, size, codebook if kind == "lc" else None, factor)
            probe = crops(train_regions, a.curve_crops, np.random.default_rng(30_000 + a.seed), crop) if a.curve_crops else None
            tr = train(model, train_regions, steps=a.steps, batch=a.batch_size, lr=a.lr, rate_q=a.rate_q, seed=a.seed,
                       schedule=a.schedule, projector_lr_mult=a.projector_lr_mult, factor=factor, probe=probe)
            t = time.perf_counter()
            on_train = usage(encode_all(model, x_train), size)
            on_held = usage(encode_all(model, x_held), size)
            rec = reconstruction(model, x_held[: a.psnr_crops])
            geo = geometry(model, x_held[: a.psnr_crops])
            run = {"quantizer": kind, "codebook_size": size, **tr, "train_tokens": on_train, "held_out_tokens": on_held,
                   **rec, "geometry": geo, "eval_seconds": time.perf_counter() - t}
            runs.append(run)
            ceil = ceilings.get(size) if kind == "lc" else None
            rows.append({"quantizer": LABELS[kind], "N": size, "util train %": 100 * on_train["util"],
                         "util held-out %": 100 * on_held["util"],
                         "ceiling train %": 100 * ceil["train"][1.0] if ceil else None,
                         "ceiling held-out %": 100 * ceil["held_out"][1.0] if ceil else None,
                         "ppl train": on_train["perplexity"], "PSNR-Y": rec["psnr_y"], "SSIM": rec["ssim"],
                         "train s": tr["train_seconds"]})
            curve = " ".join(f"{st}:{100 * u:.1f}%" for st, u in tr["curve"])
            print(f"  {LABELS[kind]:<15} N={size:<6} util {100 * on_train['util']:6.2f}% train / "
                  f"{100 * on_held['util']:6.2f}% held out ({on_train['tokens']:,} tokens each)  "
                  f"PSNR-Y {rec['psnr_y']:.2f}  ({tr['train_seconds']:.0f}s train)  train util by step {curve}", flush=True)
    total = time.perf_counter() - t_all
    print()
    print_table(rows, ["quantizer", "N", "util train %", "util held-out %", "ceiling train %", "ceiling held-out %",
                       "ppl train", "PSNR-Y", "SSIM", "train s"])
    results = check_targets(runs)
    for t, u, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {t.describe()} over training tokens: {100 * u:.2f}%")
    print(f"\ntotal {total / 60:.1f} min")
    write_json("utilization_check" if a.check else "utilization", {
        "settings": {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "schedule": a.schedule,
                     "projector_lr_mult": a.projector_lr_mult, "codebook_std": a.codebook_std, "rate_q": a.rate_q,
                     "factor": factor, "crop": crop, "tokens_per_code": a.tokens_per_code, "psnr_crops": a.psnr_crops,
                     "curve_crops": a.curve_crops, "codebook_points": a.codebook_points, "kmeans_iters": a.kmeans_iters,
                     "threads": a.threads, "seed": a.seed, "check": a.check, "photos": [n for n, _ in photos],
                     "holdout": f"right {HOLDOUT_FRACTION:.0%} of every photograph",
                     "backbone": f"ch 32, 1 res block, z 64, D'=8, f{factor}, {crop} px"},
        "ceilings": {str(k): v for k, v in ceilings.items()},
        "targets": [{"target": t.describe(), "utilization": u, "passed": ok} for t, u, ok in results],
        "runs": runs, "total_seconds": total,
    }, a.json)
    return 1 if a.check and not all(ok for _, _, ok in results) else 0


if __name__ == "__main__":
    sys.exit(main())
