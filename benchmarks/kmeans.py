"""k-means benchmark: ``vqgan_lc.codebook.kmeans`` vs raw ``faiss.Kmeans`` vs the official broadcast k-means.

Cases (all with the same iterations and seed for every method):

* ``global-64d``: K = 16384 centres from 500k x 64 vectors (DiGIT-sized global codebook; 8x8 grey patches);
* ``global-768d``: a 768-d run at a smaller size (16x16x3 RGB patches, the pixel extractor's features);
* ``per-class-768d``: one class of the paper's per-class job (~1.3k images x 16 pooled vectors = 20k
  x 768 into 100 centres), where the official approach is also timed.

Methods, each in its own subprocess so that peak memory is measured cleanly (``VmHWM`` of
/proc/self/status after resetting it through /proc/self/clear_refs, minus the resident size
before the run):

* ``ours``: ``vqgan_lc.codebook.kmeans`` with its defaults (k-means++ start for small jobs, our last
  Lloyd iteration re-seeding empty clusters);
* ``faiss``: ``faiss.Kmeans(d, k, niter, seed).train(x)``;
* ``official``: OUR REIMPLEMENTATION of the official approach (kmeans_pytorch as called by
  VQGAN-LC's ``minibatch_kmeans_per_class.py``): random init, the N x K x D difference tensor
  materialised by broadcasting, a Python loop over centres for the update. The original runs until
  the centre shift is below 1e-4 with no iteration cap; here it runs exactly ``niter`` iterations.

The data are real image patches cut from the photographs bundled with scikit-image (no downloads).
Quality: mean squared distance of up to 50k of the points to their nearest centre (not timed).

Usage::

    python benchmarks/kmeans.py                 # the sizes above, 20 iterations
    python benchmarks/kmeans.py --quick         # small sizes, a few seconds
    python benchmarks/kmeans.py --niter 3 --cases global-64d
    # what docs/benchmarks-kmeans.md records (2 shared CPU cores; about 10 minutes):
    python benchmarks/kmeans.py --niter 20 --niter64 2 --niter768 10 --official-niter 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import _status_kb

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "cat", "motorcycle_left", "motorcycle_right")
METHODS = ("ours", "faiss", "official")


# ----------------------------------------------------------------------------------------- data
def patches(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` random image patches in [-1, 1]: 8x8 grey (d=64) or 16x16 RGB (d=768), float32 (n, d)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    imgs = []
    for name in PHOTOS:
        try:
            img = getattr(skimage.data, name)()
        except (AttributeError, ImportError, OSError):  # missing from this scikit-image version, or not downloadable
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        imgs.append(np.ascontiguousarray(img[..., :3]).astype(np.float32) / 127.5 - 1)
    if d == 64:
        p, grey = 8, True
    elif d == 768:
        p, grey = 16, False
    else:
        raise ValueError("d must be 64 (8x8 grey patches) or 768 (16x16x3 RGB patches)")
    out = np.empty((n, d), np.float32)
    which = rng.integers(len(imgs), size=n)
    for i, img in enumerate(imgs):
        sel = np.nonzero(which == i)[0]
        h, w = img.shape[:2]
        ys, xs = rng.integers(0, h - p + 1, size=len(sel)), rng.integers(0, w - p + 1, size=len(sel))
        src = img.mean(-1, keepdims=True) if grey else img
        for j, y, x in zip(sel, ys, xs):
            out[j] = src[y : y + p, x : x + p].reshape(-1)
    return out


# ----------------------------------------------------------------------------------------- methods
def official_broadcast_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """Reimplemented baseline of kmeans_pytorch.kmeans (as the official VQGAN-LC code calls it).

    Random init from k distinct points; each iteration materialises ``(X[:, None] - C[None]) ** 2`` of
    shape N x K x D (kmeans_pytorch's ``pairwise_distance``), takes the argmin, and recomputes every
    centre in a Python loop (an empty one gets a random point). Fixed ``niter`` here (see module doc).
    """
    import torch

    torch.manual_seed(seed)
    X = torch.from_numpy(x)
    rng = np.random.default_rng(seed)
    state = X[torch.from_numpy(rng.choice(len(X), k, replace=False))].clone()
    for _ in range(niter):
        dis = ((X.unsqueeze(1) - state.unsqueeze(0)) ** 2.0).sum(dim=-1).squeeze()
        choice = torch.argmin(dis, dim=1)
        del dis
        for index in range(k):
            selected = torch.nonzero(choice == index).squeeze()
            selected = torch.index_select(X, 0, selected)
            if selected.shape[0] == 0:
                selected = X[torch.randint(len(X), (1,))]
            state[index] = selected.mean(dim=0)
    return state.numpy()


def run_method(method: str, x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    if method == "ours":
        from vqgan_lc.codebook import kmeans

        return kmeans(x, k, niter=niter, seed=seed, max_points_per_centroid=max(256, -(-len(x) // k))).centroids
    if method == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=max(256, -(-len(x) // k)))
        km.train(x)
        return km.centroids
    if method == "official":
        return official_broadcast_kmeans(x, k, niter, seed)
    raise ValueError(method)


def worker(args: argparse.Namespace) -> None:
    """One method on one case, in a fresh process; prints one JSON line."""
    import faiss

    x = patches(args.n, args.d, seed=1)
    if args.method != "official":
        import vqgan_lc.codebook  # noqa: F401 - imports are not part of the timing
    rss0 = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    centroids = run_method(args.method, x, args.k, args.niter, args.seed)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    q = x[np.random.default_rng(2).choice(len(x), size=min(len(x), 50_000), replace=False)]
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(q, 1)
    print(json.dumps({
        "seconds": seconds,
        "peak_mib": (peak - rss0) / 1024,
        "peak_reset": reset,
        "mse": float(dist.mean()) / x.shape[1],
        "used_centres": int(len(np.unique(index.search(q, 1)[1]))),
    }))


# ----------------------------------------------------------------------------------------- driver
def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def cases(args: argparse.Namespace) -> list[dict]:
    if args.quick:
        table = [
            dict(name="global-64d", n=20_000, d=64, k=512, methods=("ours", "faiss")),
            dict(name="global-768d", n=5_000, d=768, k=128, methods=("ours", "faiss")),
            dict(name="per-class-768d", n=2_000, d=768, k=100, methods=METHODS),
        ]
    else:
        table = [
            dict(name="global-64d", n=args.n, d=64, k=args.k, methods=("ours", "faiss"), niter=args.niter64),
            dict(name="global-768d", n=args.n768, d=768, k=args.k768, methods=("ours", "faiss"), niter=args.niter768),
            dict(name="per-class-768d", n=args.official_n, d=768, k=args.official_k, methods=METHODS),
        ]
    return [c for c in table if not args.cases or c["name"] in args.cases]


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import faiss
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "faiss": faiss.__version__,
            "gpu": torch.cuda.is_available(), "python": platform.python_version(),
            "load_average_at_end": os.getloadavg()}


def summarise(case_rows: list[dict]) -> None:
    """Best/median time and time per iteration of each method; ratios to faiss, per iteration.

    ``x faiss (paired)`` is the geometric mean over repeats of (this run / the faiss run of the same
    repeat), which cancels most of a shared machine's load drift; ``x faiss (best)`` compares the
    fastest runs.
    """
    for row in case_rows:
        if row["runs"]:
            times = sorted(r["seconds"] for r in row["runs"])
            row.update(seconds=times[0], seconds_median=times[len(times) // 2],
                       seconds_per_iter=times[0] / row["niter"],
                       peak_mib=max(r["peak_mib"] for r in row["runs"]), mse=row["runs"][0]["mse"],
                       used_centres=row["runs"][0]["used_centres"])
    base = next((r for r in case_rows if r["method"] == "faiss" and r["runs"]), None)
    if base is None:
        return
    for row in case_rows:
        if not row["runs"]:
            continue
        row["ratio_vs_faiss_best"] = row["seconds_per_iter"] / base["seconds_per_iter"]
        pairs = [(a["seconds"] / row["niter"]) / (b["seconds"] / base["niter"]) for a, b in zip(row["runs"], base["runs"])]
        row["ratio_vs_faiss_paired"] = float(np.exp(np.mean(np.log(pairs))))
        row["paired_ratios"] = pairs


def make_table(rows: list[dict]) -> str:
    header = ("| case | N x d -> K | method | iters | runs | time (s), best / median | s / iter | x faiss (paired) "
              "| x faiss (best) | peak mem (MiB) | MSE / dim | centres hit by 50k probes |")
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        size = f"{r['n']:,} x {r['d']} -> {r['k']:,}"
        if "seconds" not in r:
            lines.append(f"| {r['case']} | {size} | {r['method']} | {r['niter']} | 0 | "
                         f"{r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {size} | {r['method']} | {r['niter']} | {len(r['runs'])} | "
            f"{r['seconds']:.2f} / {r['seconds_median']:.2f} | {r['seconds_per_iter']:.3f} | "
            f"{r.get('ratio_vs_faiss_paired', float('nan')):.2f} | {r.get('ratio_vs_faiss_best', float('nan')):.2f} | "
            f"{r['peak_mib']:.0f} | {r['mse']:.5f} | {r['used_centres']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=500_000, help="global-64d: vectors")
    p.add_argument("--k", type=int, default=16_384, help="global-64d: centres")
    p.add_argument("--n768", type=int, default=50_000, help="global-768d: vectors")
    p.add_argument("--k768", type=int, default=1_024, help="global-768d: centres")
    p.add_argument("--niter64", type=int, help="global-64d: iterations (default: --niter)")
    p.add_argument("--niter768", type=int, help="global-768d: iterations (default: --niter)")
    p.add_argument("--official-n", type=int, default=20_000, help="per-class-768d: vectors (paper: ~20k per class)")
    p.add_argument("--official-k", type=int, default=100, help="per-class-768d: centres (paper: 100)")
    p.add_argument("--official-niter", type=int,
                   help="iterations of the (slow) official baseline (default: --niter); compared per iteration")
    p.add_argument("--repeats", type=int, default=1, help="runs per method, interleaved; the fastest is reported")
    p.add_argument("--official-repeats", type=int, default=1, help="runs of the (slow) official baseline")
    p.add_argument("--cases", nargs="*", help="run only these cases")
    p.add_argument("--methods", nargs="*", choices=METHODS, help="run only these methods")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kmeans.json"))
    # internal: one measurement in a subprocess
    p.add_argument("--worker", dest="method", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.method:
        worker(args)
        return 0

    rows = []
    for case in cases(args):
        methods = [m for m in case["methods"] if not args.methods or m in args.methods]
        case_rows = {}
        for method in methods:
            niter = (args.official_niter if method == "official" else None) or case.get("niter") or args.niter
            row = {"case": case["name"], "method": method, "n": case["n"], "d": case["d"], "k": case["k"],
                   "niter": niter, "runs": [], "load_average": []}
            if method == "official":
                need = 2 * case["n"] * case["k"] * case["d"] * 4 / 2**20  # (A - B) and its square
                row["broadcast_mib"] = need
                if need > 0.8 * available_mib():
                    row["skipped"] = f"N x K x D needs {need / 1024:.1f} GiB, more than the memory available"
            case_rows[method] = row
        # Repeats interleave the methods (ours, faiss, official, ours, ...) so that a load change on a
        # shared machine hits all of them alike; ratios are taken between back-to-back runs.
        for rep in range(args.repeats):
            for method in methods:
                row = case_rows[method]
                if "skipped" in row or "error" in row or (method == "official" and rep >= args.official_repeats):
                    continue
                cmd = [sys.executable, __file__, "--worker", method, "--n", str(case["n"]), "--d", str(case["d"]),
                       "--k", str(case["k"]), "--niter", str(row["niter"]), "--seed", str(args.seed)]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode != 0:
                    row["error"] = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"
                    continue
                run = json.loads(res.stdout.strip().splitlines()[-1])
                run["load_average"] = os.getloadavg()[0]
                row["runs"].append(run)
                print(f"{case['name']:>15} {method:>8} #{rep}: {run['seconds']:8.2f} s  peak {run['peak_mib']:8.1f} MiB  "
                      f"mse {run['mse']:.5f}  (load {run['load_average']:.1f})", flush=True)
        summarise(list(case_rows.values()))
        rows.extend(case_rows.values())

    table = make_table(rows)
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "kmeans", "machine": machine(), "args": vars(args), "rows": rows,
                               "table": table}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
