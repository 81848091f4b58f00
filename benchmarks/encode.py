"""End-to-end dataset encoding vs the model alone, and peak memory at 1x and 4x the images.

End-to-end = JPEG decode + resize + crop in DataLoader workers, the model, uint32 shards with
sha256, fsync and rename. Model-only = the same model on already-decoded tensors at the same
batch size. Target (issue 5): end-to-end >= 85% of model-only; peak memory flat in the image count.

    python benchmarks/encode.py                 # tiny@64px and the f16 architecture@256px
    python benchmarks/encode.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_mb, print_table, rss_mb, run_child, write_json  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def make_folder(root: Path, n: int) -> None:
    """``n`` JPEGs (quality 90, 400-640 px) cut from the scikit-image photographs."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        imgs.append(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    for i in range(n):
        a = imgs[i % len(imgs)]
        h, w = a.shape[:2]
        s = int(rng.integers(min(h, w) * 2 // 3, min(h, w) + 1))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        side = int(rng.integers(400, 641))
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[y : y + s, x : x + s]).resize((side, side * 3 // 4), Image.BICUBIC).save(d / f"{i:05d}.jpg", quality=90)


def build_model(preset: str, out: Path) -> None:
    import torch

    from vqgan_lc import create_model

    torch.manual_seed(0)
    create_model(preset, codebook=torch.randn(16384 if preset != "tiny" else 1024, 768) * 0.03).save_pretrained(
        out, inference_only=True
    )


def child(mode: str, model_dir: str, folder: str, size: int, batch: int, workers: int) -> dict:
    import torch

    from vqgan_lc import VQGANLC
    from vqgan_lc.codebook.features import Preprocess
    from vqgan_lc.data import list_images, load_rgb
    from vqgan_lc.tokens import EncodeOptions, encode_dataset

    model = VQGANLC.from_pretrained(model_dir)
    images = list_images(folder)
    n = len(images)
    if mode == "model":
        pre = Preprocess(size, (size, size))
        x = torch.stack([pre(load_rgb(images.root / p)) for p in images.paths])
        base = rss_mb()
        with torch.inference_mode():
            model.encode(x[:batch])  # warm-up
            t = time.perf_counter()
            for s in range(0, n, batch):
                model.encode(x[s : s + batch])
            dt = time.perf_counter() - t
    else:
        out = tempfile.mkdtemp()
        opts = EncodeOptions(image_size=size, batch_size=batch, num_workers=workers, shard_size=256)
        with torch.inference_mode():
            model.encode(torch.zeros(1, 3, size, size))  # same warm-up
        base = rss_mb()
        t = time.perf_counter()
        encode_dataset(model, folder, out, options=opts, progress=False)
        dt = time.perf_counter() - t
        shutil.rmtree(out)
    return {"images": n, "seconds": dt, "img_per_s": n / dt, "extra_peak_mb": max(0.0, peak_mb() - base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.child:
        m, md, folder, size, batch, workers = a.child
        print(json.dumps(child(m, md, folder, int(size), int(batch), int(workers))))
        return
    cases = [("tiny", 64, 32, 256), ("vqgan-lc-f16-100k", 256, 8, 16)]  # preset, px, batch, images at 1x
    if a.quick:
        cases = [("tiny", 64, 32, 64)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset, size, batch, n in cases:
            md = tmp / f"model-{preset}"
            build_model(preset, md)
            for mult in (1, 4):
                folder = tmp / f"img-{n * mult}"
                if not folder.exists():
                    make_folder(folder, n * mult)
                model_only = run_child(__file__, "model", str(md), str(folder), str(size), str(batch), str(a.workers))
                e2e = run_child(__file__, "e2e", str(md), str(folder), str(size), str(batch), str(a.workers))
                rows.append({"model": f"{preset} @{size}px", "images": n * mult, "batch": batch,
                             "model-only img/s": model_only["img_per_s"], "end-to-end img/s": e2e["img_per_s"],
                             "e2e / model": e2e["img_per_s"] / model_only["img_per_s"],
                             "e2e extra peak MB": e2e["extra_peak_mb"]})
    print_table(rows, ["model", "images", "batch", "model-only img/s", "end-to-end img/s", "e2e / model", "e2e extra peak MB"])
    write_json("encode", {"rows": rows, "workers": a.workers}, a.json)


if __name__ == "__main__":
    main()
