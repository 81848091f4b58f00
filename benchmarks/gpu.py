"""GPU readiness: encode throughput, nearest-code search, a training step and multi-GPU encode scaling.

Sections (each ratio is against a baseline measured in the same run):

- ``encode``: images/s of ``model.encode`` for the f16 preset at 256 px: fp32 (baseline), bf16 autocast,
  channels_last, bf16 + channels_last, and ``torch.compile`` of the encoder; plus the fraction of ids equal
  to the fp32 run.
- ``search``: ``vqgan_lc.quantize.nearest_code`` on the device vs faiss (``GpuIndexFlatL2`` when
  faiss-gpu is importable; the CPU index in ``--dry-run-cpu``) vs the official full-matrix formula
  (``||z||^2 + ||c||^2 - 2 z c^T`` then argmin; the baseline) at N queries, K codes, D dims.
- ``train_step``: forward + backward of the model with ``VQGANLoss`` (L1 + quantizer + GAN, LPIPS off) and
  the discriminator step, fp32 (baseline) and bf16 autocast.
- ``scaling``: encode images/s with one model replica per GPU (1, 2, ... all), one thread per device,
  each encoding its share of the batch; ratio against one GPU.

    python benchmarks/gpu.py                       # needs CUDA; prints one line and exits 0 without it
    python benchmarks/gpu.py --batch 64 --repeat 10
    python benchmarks/gpu.py --dry-run-cpu --json /tmp/gpu.json   # every code path on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_json

ENCODE_VARIANTS = ("fp32", "bf16", "channels_last", "bf16+channels_last", "compile")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any, repeat: int, warmup: int) -> float:
    """Best wall time (s) of ``fn`` over ``repeat`` runs after ``warmup``, synchronising the device."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _peak_mb(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def build_model(preset: str, codebook_size: int, device: Any) -> Any:
    import torch

    from vqgan_lc import create_model

    torch.manual_seed(0)
    return create_model(preset, codebook=torch.randn(codebook_size, 768) * 0.03,
                        quantizer={"kind": "lc", "codebook_size": codebook_size}).to(device).eval()


def bench_encode(a: argparse.Namespace, device: Any) -> list[dict[str, Any]]:
    import torch

    model = build_model(a.preset, a.codebook_size, device)
    x = (torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    rows: list[dict[str, Any]] = []
    ref_ids = None
    for variant in a.variants:
        m = model
        xin = x
        if "channels_last" in variant:
            m = build_model(a.preset, a.codebook_size, device).to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        if variant == "compile":
            m = build_model(a.preset, a.codebook_size, device)
            m.encoder = torch.compile(m.encoder, backend=a.compile_backend)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in variant else nullcontext()

        def run(m: Any = m, xin: Any = xin, amp: Any = amp) -> Any:
            with torch.inference_mode(), amp:
                return m.encode(xin)

        _reset_peak(device)
        try:
            ids = run()
            seconds = timed(run, device, a.repeat, a.warmup)
        except Exception as e:  # noqa: BLE001 - a failing option is reported, not fatal
            rows.append({"variant": variant, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        if ref_ids is None:
            ref_ids = ids
        rows.append({"variant": variant, "images_per_s": a.batch / seconds, "seconds": seconds,
                     "ids_equal_fp32": float((ids == ref_ids).float().mean()), "peak_mb": _peak_mb(device)})
    base = next((r for r in rows if r["variant"] == "fp32" and "error" not in r), None)
    for r in rows:
        r["vs_fp32"] = r["images_per_s"] / base["images_per_s"] if base and "images_per_s" in r else None
    return rows


def bench_search(a: argparse.Namespace, device: Any) -> list[dict[str, Any]]:
    import torch

    from vqgan_lc.quantize import full_matrix_nearest_code, nearest_code

    g = torch.Generator().manual_seed(0)
    z = torch.randn(a.search_n, a.search_d, generator=g).to(device)
    c = torch.randn(a.search_k, a.search_d, generator=g).to(device)
    methods: dict[str, Callable[[], Any]] = {
        "official": lambda: full_matrix_nearest_code(z, c),
        "nearest_code": lambda: nearest_code(z, c),
    }
    faiss_note = None
    try:
        import faiss

        zn, cn = z.cpu().numpy(), c.cpu().numpy()
        if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
            res = faiss.StandardGpuResources()
            index = faiss.GpuIndexFlatL2(res, a.search_d)
            name = "faiss-gpu"
        elif device.type == "cuda":
            index, name, faiss_note = None, "faiss-gpu", "faiss is importable but has no GPU support (faiss-cpu)"
        else:
            index, name = faiss.IndexFlatL2(a.search_d), "faiss-cpu"
        if index is not None:
            index.add(cn)
            methods[name] = lambda: torch.from_numpy(index.search(zn, 1)[1][:, 0])
    except ImportError:
        faiss_note = "faiss is not importable"
    rows: list[dict[str, Any]] = []
    ref = None
    for name, fn in methods.items():
        _reset_peak(device)
        try:
            ids = fn().to(device)
            seconds = timed(fn, device, a.repeat, a.warmup)
        except Exception as e:  # noqa: BLE001 - e.g. the full matrix out of memory
            rows.append({"method": name, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        if ref is None:
            ref = ids
        rows.append({"method": name, "seconds": seconds, "queries_per_s": a.search_n / seconds,
                     "ids_equal_official": float((ids == ref).float().mean()), "peak_mb": _peak_mb(device)})
    base = next((r for r in rows if r["method"] == "official" and "error" not in r), None)
    for r in rows:
        r["speedup_vs_official"] = base["seconds"] / r["seconds"] if base and "seconds" in r else None
    if faiss_note:
        rows.append({"method": "faiss-gpu", "error": faiss_note})
    return rows


def bench_train_step(a: argparse.Namespace, device: Any) -> list[dict[str, Any]]:
    import torch

    from vqgan_lc.losses import VQGANLoss

    rows: list[dict[str, Any]] = []
    x = (torch.rand(a.train_batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    for precision in ("fp32", "bf16"):
        model = build_model(a.preset, a.codebook_size, device).train()
        objective = VQGANLoss(perceptual_weight=0.0).to(device)
        kw: dict[str, Any] = {"lr": 1e-5, "betas": (0.5, 0.9)}
        opt_g = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], **kw)
        opt_d = torch.optim.Adam(objective.discriminator.parameters(), **kw)

        def step(model: Any = model, objective: Any = objective, opt_g: Any = opt_g, opt_d: Any = opt_d,
                 precision: str = precision) -> float:
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
            with amp:
                out = model(x)
                gl = objective.generator_loss(x, out.reconstruction, out.quantizer,
                                              last_layer=model.decoder.last_layer, gan_active=True)
            opt_g.zero_grad(set_to_none=True)
            gl.loss.backward()
            opt_g.step()
            with amp:
                dl = objective.discriminator_step_loss(x, out.reconstruction.detach())
            opt_d.zero_grad(set_to_none=True)
            dl.loss.backward()
            opt_d.step()
            return float(gl.loss.detach())

        _reset_peak(device)
        try:
            loss = step()
            seconds = timed(step, device, a.repeat, a.warmup)
        except Exception as e:  # noqa: BLE001 - a failing precision (e.g. out of memory) is reported, not fatal
            rows.append({"precision": precision, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rows.append({"precision": precision, "step_ms": 1000 * seconds, "images_per_s": a.train_batch / seconds,
                     "loss": loss, "peak_mb": _peak_mb(device)})
    base = next((r for r in rows if r["precision"] == "fp32" and "error" not in r), None)
    for r in rows:
        r["vs_fp32"] = base["step_ms"] / r["step_ms"] if base and "step_ms" in r else None
    return rows


def bench_scaling(a: argparse.Namespace, devices: list[Any]) -> list[dict[str, Any]]:
    import torch

    models = [build_model(a.preset, a.codebook_size, d) for d in devices]
    per = max(1, a.batch)
    xs = [(torch.rand(per, 3, a.size, a.size, generator=torch.Generator().manual_seed(i)) * 2 - 1).to(d)
          for i, d in enumerate(devices)]
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for n in range(1, len(devices) + 1):
            def run(n: int = n) -> None:
                def one(i: int) -> Any:
                    with torch.inference_mode():
                        ids = models[i].encode(xs[i])
                    _sync(devices[i])
                    return ids

                list(pool.map(one, range(n)))

            for _ in range(a.warmup):
                run()
            best = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            rows.append({"devices": n, "images_per_s": n * per / best, "seconds": best})
    for r in rows:
        r["vs_one"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["efficiency"] = r["vs_one"] / r["devices"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="run every code path on the CPU with tiny sizes (a test, not a measurement)")
    ap.add_argument("--preset", default="vqgan-lc-f16-100k")
    ap.add_argument("--codebook-size", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="images per encode call (per GPU for scaling)")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--search-n", type=int, default=16384)
    ap.add_argument("--search-k", type=int, default=100_000)
    ap.add_argument("--search-d", type=int, default=8)
    ap.add_argument("--variants", default=",".join(ENCODE_VARIANTS),
                    help=f"encode variants, comma-separated from {', '.join(ENCODE_VARIANTS)}")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--sections", default="encode,search,train_step,scaling")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="output path (default benchmarks/results/gpu.json)")
    a = ap.parse_args(argv)

    import torch

    if a.dry_run_cpu:
        a.preset, a.codebook_size, a.size, a.batch, a.train_batch = "tiny", 256, 32, 2, 2
        a.search_n, a.search_k, a.search_d = 128, 512, 8
        a.compile_backend, a.repeat, a.warmup = "eager", 1, 0
        devices = [torch.device("cpu"), torch.device("cpu")]  # two "devices" exercise the scaling threads
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device, nothing measured (--dry-run-cpu runs its code paths on the CPU)")
        return 0
    else:
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 is its own row
        torch.backends.cudnn.allow_tf32 = False
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = sorted(set(a.variants) - set(ENCODE_VARIANTS))
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {', '.join(ENCODE_VARIANTS)}")
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    device = devices[0]
    result: dict[str, Any] = {
        "dry_run_cpu": a.dry_run_cpu, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_devices": len(devices) if device.type == "cuda" else 0,
        "settings": {k: getattr(a, k) for k in ("preset", "codebook_size", "size", "batch", "train_batch",
                                                  "search_n", "search_k", "search_d", "variants",
                                                  "compile_backend", "repeat", "warmup")},
    }
    if "encode" in sections:
        result["encode"] = bench_encode(a, device)
        print(f"\nencode: {a.preset} @ {a.size}px, batch {a.batch}, best of {a.repeat}")
        print_table(result["encode"], ["variant", "images_per_s", "vs_fp32", "ids_equal_fp32", "peak_mb", "error"])
    if "search" in sections:
        result["search"] = bench_search(a, device)
        print(f"\nnearest-code search: N={a.search_n}, K={a.search_k}, D={a.search_d}")
        print_table(result["search"], ["method", "seconds", "speedup_vs_official", "ids_equal_official", "peak_mb",
                                       "error"])
    if "train_step" in sections:
        result["train_step"] = bench_train_step(a, device)
        print(f"\ntraining step (generator + discriminator): batch {a.train_batch}")
        print_table(result["train_step"], ["precision", "step_ms", "vs_fp32", "images_per_s", "loss", "peak_mb",
                                           "error"])
    if "scaling" in sections:
        result["scaling"] = bench_scaling(a, devices)
        print(f"\nencode scaling: batch {a.batch} per device")
        print_table(result["scaling"], ["devices", "images_per_s", "vs_one", "efficiency"])
    write_json("gpu", result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
