"""One training step (generator + discriminator) of the same backbone with LC-100k vs a trainable 16k VQ.

The issue's target: the step with the frozen 100,000 x 768 codebook and its projector (VQGAN-LC) costs at
most 1.10x the step with a trainable 16,384-entry codebook (taming VQ). Both use the same encoder,
decoder, PatchGAN and losses (L1 + quantizer + adaptive hinge GAN; LPIPS off: no VGG weights offline),
so the difference is the quantizer: projecting all N codes every step (N x 768 x D' multiply-adds forward
and again backward), the nearest-code search over N codes, and the gather.

Each case runs in its own process (peak memory is its own). Also timed: the quantizer alone (forward
and backward of ``model.quantize`` on a fixed latent) to show where the difference comes from.

    python benchmarks/train_step.py                 # tiny backbone, 64 px, batch 8 (8x8 tokens/image)
    python benchmarks/train_step.py --quick         # 32 px, batch 4, fewer repeats
    python benchmarks/train_step.py --preset vqgan-lc-f16-100k --size 256 --batch 2   # the real backbone
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import best_of, peak_mb, print_table, rss_mb, run_child, write_json

CASES = {
    "lc-100k": {"quantizer": "lc", "codebook_size": 100_000},
    "vq-16k": {"quantizer": "vq", "codebook_size": 16_384},
}


def child(case: str, preset: str, size: int, batch: int, repeat: int, threads: int) -> dict:
    import torch

    from vqgan_lc import VQGANLC, get_config
    from vqgan_lc.losses import VQGANLoss

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = CASES[case]
    cfg = get_config(preset).replace(quantizer={"kind": spec["quantizer"], "codebook_size": spec["codebook_size"]})
    if spec["quantizer"] == "lc":
        model = VQGANLC.from_config(cfg, codebook=torch.randn(spec["codebook_size"], 768) * 0.03)
    else:
        model = VQGANLC(cfg)
    model.train()
    objective = VQGANLoss(perceptual_weight=0.0)
    kw = dict(lr=1e-5, betas=(0.5, 0.9), eps=1e-7)
    opt_g = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], **kw)
    opt_d = torch.optim.Adam(objective.discriminator.parameters(), **kw)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    base = rss_mb()

    def step() -> None:  # what VQGANLCModule.training_step does once the GAN is on
        out = model(x)
        g = objective.generator_loss(x, out.reconstruction, out.quantizer, last_layer=model.decoder.last_layer,
                                     gan_active=True)
        opt_g.zero_grad(set_to_none=True)
        g.loss.backward()
        opt_g.step()
        d = objective.discriminator_step_loss(x, out.reconstruction.detach())
        opt_d.zero_grad(set_to_none=True)
        d.loss.backward()
        opt_d.step()

    step_s = best_of(step, repeat=repeat, warmup=2)
    with torch.no_grad():
        z = model.encode_latents(x)
    z.requires_grad_(True)

    def quantizer_only() -> None:
        q = model.quantize(z)
        (q.z_q.sum() + q.loss).backward()

    quant_s = best_of(quantizer_only, repeat=repeat, warmup=1)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"step_s": step_s, "quantizer_s": quant_s, "trainable_params": params,
            "tokens_per_step": int(z.shape[0] * z.shape[2] * z.shape[3]), "extra_peak_mb": peak_mb() - base,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=6, metavar=("CASE", "PRESET", "SIZE", "BATCH", "REPEAT", "THREADS"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/train_step.json)")
    a = ap.parse_args()
    if a.child:
        case, preset, size, batch, repeat, threads = a.child
        print(json.dumps(child(case, preset, int(size), int(batch), int(repeat), int(threads))))
        return
    if a.quick:
        a.size, a.batch, a.repeat = 32, 4, 3
    rows = []
    for case in CASES:
        r = run_child(__file__, case, a.preset, str(a.size), str(a.batch), str(a.repeat), str(a.threads))
        rows.append({"case": case, **r})
    ref = rows[1]["step_s"]
    for r in rows:
        r["step_ms"] = 1000 * r["step_s"]
        r["quantizer_ms"] = 1000 * r["quantizer_s"]
        r["vs_vq16k"] = r["step_s"] / ref
    print(f"preset {a.preset}, {a.size} px, batch {a.batch}, best of {a.repeat}")
    print_table(rows, ["case", "step_ms", "vs_vq16k", "quantizer_ms", "tokens_per_step", "trainable_params",
                       "extra_peak_mb", "threads"])
    ratio = rows[0]["vs_vq16k"]
    print(f"\nLC-100k / VQ-16k step time: {ratio:.3f} (target <= 1.10): {'OK' if ratio <= 1.10 else 'OVER'}")
    write_json("train_step", {"preset": a.preset, "size": a.size, "batch": a.batch, "repeat": a.repeat,
                              "rows": rows, "ratio": ratio, "target": 1.10}, a.out)


if __name__ == "__main__":
    main()
