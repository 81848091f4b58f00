"""GPT sampling speed: KV-cache decoding vs full recomputation, 256 tokens, batch 1 and 16.

Both modes draw the same ids from the same logits (tested in tests/test_gpt.py); they differ only in
cost. KV cache = one new position per forward. Full recomputation = the whole sequence (prefix,
class token, ids so far) every step, head applied to the last position only (what a sensible
cache-less sampler does). Target (issue): cache >= 5x recomputation in tokens/s.

Recomputation at batch 16 is expensive on a CPU (sum over 256 steps of a growing sequence), so by
default its time is estimated from every ``--stride``-th step (the cost of a step depends only on
its length): ``sum_t time(t) ~= stride * sum_{t = s/2, 3s/2, ...} time(t)``; batch 1 is also timed
exactly to show the estimate's error. ``--exact`` times every step everywhere.

    python benchmarks/sample.py                      # GPT 8 layers x 512, 16,384 codes + 1,000 classes
    python benchmarks/sample.py --quick              # 4 layers x 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import best_of, print_table, write_json


def timed_recompute(gpt, batch: int, seq: int, stride: int, labels) -> tuple[float, str]:  # noqa: ANN001
    """Seconds for ``seq`` recomputation steps; every step (stride 1) or midpoints of ``stride`` blocks."""
    import torch

    from vqgan_lc.generate.sampling import SamplingConfig, sample_next

    s = SamplingConfig(top_k=0.1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, gpt.config.n_codes, (batch, seq))
    steps = list(range(seq)) if stride == 1 else list(range(stride // 2, seq, stride))
    total = 0.0
    with torch.no_grad():
        gpt(ids[:, :8], labels, last_only=True)  # warm-up
        for t in steps:
            t0 = time.perf_counter()
            sample_next(gpt(ids[:, :t], labels, last_only=True), s, g)
            total += time.perf_counter() - t0
    scale = seq / len(steps)
    return total * scale, "exact" if stride == 1 else f"every {stride}th step x{scale:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--stride", type=int, default=16, help="recomputation steps sampled at batch > 1")
    ap.add_argument("--exact", action="store_true", help="time every recomputation step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/sample.json)")
    args = ap.parse_args()

    import torch

    from vqgan_lc.generate import GPT, GPTConfig, SamplingConfig, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.layers, args.width, args.heads = 4, 256, 4
    torch.manual_seed(0)
    cfg = GPTConfig(n_codes=args.codes, grid=(16, 16), n_classes=args.classes, n_layer=args.layers,
                    n_head=args.heads, n_embd=args.width)
    gpt = GPT(cfg).eval()
    seq = cfg.seq_len
    params = gpt.num_parameters() / 1e6
    print(f"GPT {args.layers} layers x {args.width} ({args.heads} heads), {args.codes} codes + {args.classes} "
          f"classes, {params:.1f}M parameters, {seq} tokens, top-k 10%, {torch.get_num_threads()} threads\n")
    rows = []
    for b in args.batches:
        labels = torch.arange(b) % args.classes
        t_cache = best_of(lambda b=b, labels=labels: generate(gpt, b, labels=labels, sampling=SamplingConfig(top_k=0.1),
                                                              seed=0, mode="cache"), repeat=3, warmup=1)
        stride = 1 if (args.exact or b == 1) else args.stride
        t_full, how = timed_recompute(gpt, b, seq, stride, labels)
        row = {"batch": b, "tokens": seq, "cache s": t_cache, "cache tok/s": b * seq / t_cache,
               "recompute s": t_full, "recompute tok/s": b * seq / t_full, "speedup": t_full / t_cache,
               "recompute timing": how}
        if b == 1 and not args.exact:  # the estimator's error where the exact time is known
            est, _ = timed_recompute(gpt, b, seq, args.stride, labels)
            row["estimate / exact"] = est / t_full
        rows.append(row)
        print(f"batch {b}: cache {t_cache:.2f} s, recompute {t_full:.2f} s ({how}), speedup {t_full / t_cache:.1f}x",
              flush=True)
    print()
    print_table(rows, ["batch", "tokens", "cache s", "cache tok/s", "recompute s", "recompute tok/s", "speedup",
                       "recompute timing", "estimate / exact"])
    ok = all(r["speedup"] >= 5 for r in rows)
    print(f"\ntarget: KV cache >= 5x recomputation at 256 tokens -> {'met' if ok else 'NOT met'}")
    write_json("sample", {"model": {**cfg.to_dict(), "parameters_M": params}, "rows": rows, "target_met": ok},
               args.json)


if __name__ == "__main__":
    main()
