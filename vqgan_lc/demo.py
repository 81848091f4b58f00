"""The offline demo (``make demo``): the whole pipeline on scikit-image's bundled photographs.

Stages: tiles of the photographs -> pixel-patch codebook (k-means) -> train the ``tiny`` preset
(L1 + quantizer loss, plain PyTorch loop) -> model directory -> token directory of the held-out
tiles -> decode -> PSNR and codebook utilization -> ``report.md`` with a reconstruction grid and
a loss curve. Same seed, same numbers. Needs the ``dev`` extra (scikit-image, faiss).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("vqgan_lc.demo")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def write_tiles(out: Path, size: int = 80, seed: int = 0) -> tuple[Path, Path]:
    """Tiles of each photograph (resized to 320 px short side): top 80% -> train/, bottom 20% -> val/."""
    import skimage.data
    from PIL import Image

    train, val = out / "train", out / "val"
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        img = Image.fromarray(np.ascontiguousarray(a))
        s = 320 / min(img.size)
        img = np.asarray(img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BICUBIC))
        h, w = img.shape[:2]
        cut = int(h * 0.8) // size * size
        for split, (y0, y1) in ((train, (0, cut)), (val, (cut, h))):
            d = split / name
            d.mkdir(parents=True, exist_ok=True)
            step = size
            for y in range(y0, y1 - size + 1, step):
                for x in range(0, w - size + 1, step):
                    Image.fromarray(img[y : y + size, x : x + size]).save(d / f"{y:04d}_{x:04d}.png")
    return train, val


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .codebook import PixelExtractor, build_codebook, load_codebook
    from .codebook.data import list_images, load_rgb
    from .codebook.features import Preprocess
    from .model import VQGANLC
    from .quantize import CodebookUsage
    from .registry import create_model
    from .tokens import EncodeOptions, encode_dataset, open_tokens

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    stages = 6

    def stage(i: int, what: str) -> None:
        log.info("[%d/%d] %s (%.0f s elapsed)", i, stages, what, time.perf_counter() - t0)

    stage(1, "writing tiles of the bundled photographs")
    train_dir, val_dir = write_tiles(out / "data")
    stage(2, f"codebook: k-means (K={a.k}) over 16x16 pixel patches of the training tiles")
    codebook_path = out / "codebook.safetensors"
    build_codebook(train_dir, PixelExtractor(patch_size=16, image_size=64), codebook_path, k=a.k, niter=20,
                   seed=a.seed, progress=False, overwrite=True)

    stage(3, f"training the tiny preset for {a.steps} steps (about {a.steps // 10} s per 100 steps on 2 cores)")
    # Pixel-patch centres are ~15x larger than a fresh encoder's latents, so every token would pick one
    # code; centring and rescaling (as `codebook_std` in configs/tiny_cpu.yaml) only moves the
    # projector's starting point.
    cb = load_codebook(codebook_path).vectors
    model = create_model("tiny", codebook=(cb - cb.mean(0)) / cb.std() * 0.03).train()
    pre = Preprocess(64, (64, 64))
    images = list_images(train_dir)
    x_all = torch.stack([pre(load_rgb(train_dir / p)) for p in images.paths])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4, betas=(0.5, 0.9), eps=1e-7)
    g = torch.Generator().manual_seed(a.seed)
    losses = []
    for step in range(a.steps):
        idx = torch.randint(0, len(x_all), (16,), generator=g)
        x = x_all[idx]
        o = model(x)
        rec = F.l1_loss(o.reconstruction, x)
        loss = rec + 0.1 * o.quantizer.loss  # official weights for rec and VQ terms; no GAN / LPIPS offline
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(rec.detach()))
        if (step + 1) % 100 == 0:
            log.info("  step %d/%d  L1 %.4f", step + 1, a.steps, np.mean(losses[-100:]))
    model.eval()
    model_dir = model.save_pretrained(out / "model")

    stage(4, "encoding the held-out tiles to a token directory")
    tok_dir = out / "tokens"
    encode_dataset(VQGANLC.from_pretrained(model_dir), val_dir, tok_dir, overwrite=True, progress=False,
                   options=EncodeOptions(image_size=64, batch_size=32, num_workers=0, shard_size=256))
    tokens = open_tokens(tok_dir)

    stage(5, "decoding the tokens and measuring")
    ids = torch.from_numpy(tokens[:].astype(np.int64))
    x_val = torch.stack([pre(load_rgb(val_dir / p)) for p in tokens.paths])
    with torch.no_grad():
        recon = torch.cat([model.decode(ids[i : i + 64]) for i in range(0, len(ids), 64)]).clamp(-1, 1)
    mse = ((recon - x_val) / 2).pow(2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
    usage = CodebookUsage(model.codebook_size)
    usage.update(ids)
    metrics = {"val_images": len(ids), "val_tokens": int(ids.numel()), "psnr_rgb_db": round(psnr, 3),
               "utilization": round(usage.utilization, 4), "codes_used": usage.used,
               "perplexity": round(usage.perplexity, 2), "train_l1_first_100": round(float(np.mean(losses[:100])), 4),
               "train_l1_last_100": round(float(np.mean(losses[-100:])), 4)}

    stage(6, "writing the report")
    _grid(x_val[:8], recon[:8], out / "reconstructions.png")
    _plots(losses, usage.counts, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    (out / "report.md").write_text(
        f"# vqgan-lc demo\n\nTiny VQGAN-LC (64 px -> 8x8 tokens, frozen {model.codebook_size} x 768 pixel-patch "
        f"codebook, trainable projector) trained {a.steps} steps on tiles of scikit-image's photographs; "
        f"metrics on held-out tiles.\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        "![reconstructions](reconstructions.png) (top: originals, bottom: reconstructions)\n\n"
        "![loss](loss_curve.png) ![usage](code_usage.png)\n\n"
        f"Reproduce: `python -m vqgan_lc.demo --out {a.out} --steps {a.steps} --k {a.k} --seed {a.seed}`\n"
        f"Files: `{codebook_path.name}` (codebook), `model/` (model directory), `tokens/` (token directory); "
        f"e.g. `vqgan-lc decode --model {model_dir} --tokens {tok_dir} --out {out / 'decoded'} --indices 0:8`.\n"
    )
    log.info("done in %.0f s: %s", time.perf_counter() - t0, json.dumps(metrics))
    return 0


def _grid(top: torch.Tensor, bottom: torch.Tensor, path: Path) -> None:
    from PIL import Image

    rows = [torch.cat(list(t), dim=2) for t in (top, bottom)]
    arr = torch.cat(rows, dim=1).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(path)


def _plots(losses: list[float], counts: torch.Tensor, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        log.warning("matplotlib missing: no loss/usage plots")
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.convolve(losses, np.ones(20) / 20, mode="valid"))
    ax.set(xlabel="step", ylabel="L1 (20-step mean)", title="training loss")
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    c = np.sort(counts.numpy())[::-1]
    ax.semilogy(np.maximum(c, 0.5))
    ax.set(xlabel="code rank", ylabel="count (log)", title="code usage on held-out tiles")
    fig.tight_layout()
    fig.savefig(out / "code_usage.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
