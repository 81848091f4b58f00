"""Nearest-code search: vqgan_lc.nearest_code vs faiss IndexFlatL2 (k=1) vs the official full-matrix formula.

Each method runs in its own process so its peak memory (VmHWM - RSS before the search) is its own.
Target (issue 2): ours <= 1.5x faiss at N=16384, K=100000, D=8 on CPU, < 512 MB extra peak memory.

    python benchmarks/quantize.py            # the issue's size, plus D=4, D=16 and D=768
    python benchmarks/quantize.py --quick    # smaller, for a smoke run
    python benchmarks/quantize.py --cases 16384x100000x8,16384x100000x16   # N x K x D of your choice

``ours`` uses the C kernel's path chosen by VQGAN_LC_SEARCH_KERNEL (default auto: AVX2 where the
CPU has it); ``ours-scalar`` forces its scalar path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import best_of, peak_mb, print_table, rss_mb, run_child, write_json


def child(method: str, n: int, k: int, d: int, repeat: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    base = rss_mb()
    if method == "ours":
        from vqgan_lc.quantize import nearest_code

        def fn() -> torch.Tensor:
            return nearest_code(z, c)
    elif method == "ours-scalar":  # the C kernel's portable path
        from vqgan_lc.quantize import search

        def fn() -> torch.Tensor:
            return search._fused_search(z, c, c.pow(2).sum(1), kernel="scalar")
    elif method == "ours-blocked":  # the pure-PyTorch path (no C kernel)
        from vqgan_lc.quantize import search

        def fn() -> torch.Tensor:
            return search._blocked_search_cpu(z, c, c.pow(2).sum(1))
    elif method == "faiss":
        import faiss

        index = faiss.IndexFlatL2(d)
        index.add(c.numpy())
        zn = z.numpy()

        def fn() -> torch.Tensor:
            return torch.from_numpy(index.search(zn, 1)[1][:, 0])
    elif method == "official":
        from vqgan_lc.quantize import full_matrix_nearest_code

        def fn() -> torch.Tensor:
            return full_matrix_nearest_code(z, c)
    else:
        raise ValueError(method)
    ids = fn()
    seconds = best_of(fn, repeat=repeat, warmup=0)
    return {"seconds": seconds, "extra_peak_mb": max(0.0, peak_mb() - base), "ids_head": ids[:2048].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=5, metavar=("METHOD", "N", "K", "D", "REPEAT"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="output path (default benchmarks/results/quantize.json)")
    ap.add_argument("--cases", help="comma-separated NxKxD (default: 16384x100000x{8,4,16}, 4096x16384x768)")
    ap.add_argument("--methods", default="ours,ours-scalar,ours-blocked,faiss,official",
                    help="comma-separated subset of ours, ours-scalar, ours-blocked, faiss, official")
    a = ap.parse_args()
    if a.child:
        m, n, k, d, r = a.child
        print(json.dumps(child(m, int(n), int(k), int(d), int(r))))
        return
    try:
        import faiss  # noqa: F401

        have_faiss = True
    except ImportError:
        have_faiss = False
    cases = [(16384, 100_000, 8), (16384, 100_000, 4), (16384, 100_000, 16), (4096, 16384, 768)]
    official_n = 2048  # the full N x K matrix (and its temporaries) must fit in memory
    if a.quick:
        cases = [(2048, 20_000, 8)]
    if a.cases:
        cases = [tuple(int(v) for v in case.lower().split("x")) for case in a.cases.split(",")]
    wanted = a.methods.split(",")
    rows = []
    for n, k, d in cases:
        # The scalar path is not meant for D = 768 (the blocked BLAS path runs there).
        methods = [m for m in ("ours", "ours-scalar", "ours-blocked") if m in wanted and not (m == "ours-scalar" and d > 64)]
        methods = ["ours"] + [m for m in methods if m != "ours"] + (["faiss"] if have_faiss and "faiss" in wanted else [])
        results = {m: run_child(__file__, m, str(n), str(k), str(d), str(a.repeat)) for m in methods}
        ref = results.get("faiss", results["ours"])["seconds"]
        for m, r in results.items():
            same = r["ids_head"] == results["ours"]["ids_head"]
            rows.append({"N": n, "K": k, "D": d, "method": m, "seconds": r["seconds"], "x faiss": r["seconds"] / ref if have_faiss else None,
                         "extra peak MB": r["extra_peak_mb"], "ids = ours (first 2048)": same})
        if "official" not in wanted:
            continue
        on = min(official_n, n)
        off = run_child(__file__, "official", str(on), str(k), str(d), str(max(1, a.repeat // 2)))
        scaled = off["seconds"] * n / on
        rows.append({"N": n, "K": k, "D": d, "method": f"official full matrix (N={on}, time scaled x{n // on})",
                     "seconds": scaled, "x faiss": scaled / ref if have_faiss else None, "extra peak MB": off["extra_peak_mb"],
                     "ids = ours (first 2048)": off["ids_head"][:on] == results["ours"]["ids_head"][:on]})
    cols = ["N", "K", "D", "method", "seconds", "x faiss", "extra peak MB", "ids = ours (first 2048)"]
    print_table(rows, cols)
    write_json("quantize", {"rows": rows}, a.json)


if __name__ == "__main__":
    main()
