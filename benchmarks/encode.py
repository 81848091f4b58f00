"""End-to-end dataset encoding vs the model alone, and peak memory at 1x and 4x the images.

End-to-end = ``encode_dataset``: JPEG decode + resize + crop, the model, uint32 shards with sha256,
fsync and rename. Model-only = the same model on already-decoded tensors at the same batch size,
with torch's default threads. A run is one fresh process: warm-up batches of that size, end-to-end
(peak memory measured here), then model-only; ``e2e / model`` is the ratio within that process (the
same model's speed differs by up to 15 % between processes on a shared machine). Target (issue 5):
end-to-end >= 85% of model-only; peak memory flat in the image count.

Decode: ``exact`` is the default full JPEG decode + bicubic resize; ``draft`` is ``--jpeg-draft``
(libjpeg decodes at 1/2, 1/4 or 1/8 scale, short side >= 2x the target). A file is only reduced when
its short side is >= 4x the target: the test JPEGs (short side 300-480 px) are at 64 px, never at
256 px, so the f16 @256px rows run the exact decode only.
Pipeline: ``workers=N`` is the default pipeline (N DataLoader processes decode, the model runs on
all intra-op threads); ``parallel=N`` is ``--cpu-parallel-batches N`` (N threads each decode and
encode a whole batch with 1/N of the intra-op threads).

    python benchmarks/encode.py                 # tiny@64px (all four) and the f16 architecture@256px
    python benchmarks/encode.py --workers 2 --decode exact --pipeline workers
    python benchmarks/encode.py --quick
    python benchmarks/encode.py --sources       # issue 16: folder vs wds: tars, --latents, tiny@64px

``--sources``: the same JPEGs as a folder and as WebDataset tars (256 per tar), tiny @64px, batch 32,
one decoding worker, 1x and 4x the images. One fresh process per image count times folder, tars,
and folder with ``--latents float16`` three times each (twice with ``--quick``: 128 and 512 images),
interleaved, and keeps each mode's best
(the ratios ``wds / folder`` and ``latents / ids`` are within that process). Peak memory: one
fresh process per (source, count) so each high-water mark is its own. Targets: tars >= 0.9x the
folder's throughput; peak memory flat from 1x to 4x; ``--latents`` adds <= 10%. CPU seconds (this
process and its finished decoding workers, best of the repeats) are printed beside the wall-clock
ratios: on a shared machine they move far less with the other jobs' load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_mb, print_table, rss_mb, run_child, write_json

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


def make_tars(folder: Path, out: Path, per_tar: int = 256) -> str:
    """The folder's JPEGs, in its sorted order, as WebDataset tars (``KEY.jpg`` + ``KEY.cls``); the pattern."""
    import io
    import tarfile

    from vqgan_lc.data import list_images

    images = list_images(folder)
    out.mkdir(parents=True, exist_ok=True)
    n_tars = (len(images) + per_tar - 1) // per_tar
    for t in range(n_tars):
        with tarfile.open(out / f"part-{t:06d}.tar", "w") as tf:
            for i in range(t * per_tar, min((t + 1) * per_tar, len(images))):
                key = images.paths[i].replace("/", "_").rsplit(".", 1)[0]
                for ext, data in (("jpg", (folder / images.paths[i]).read_bytes()), ("cls", str(images.labels[i]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(out / f"part-{{000000..{n_tars - 1:06d}}}.tar")


def source_child(what: str, model_dir: str, folder: str, tars: str, size: int, batch: int, repeat: int = 3) -> dict:
    """``what == "time"``: interleaved best-of-``repeat`` of folder / wds / folder + latents in this process;
    ``"peak-folder"`` / ``"peak-wds"``: one run and its extra peak memory."""
    import torch

    from vqgan_lc import VQGANLC
    from vqgan_lc.tokens import EncodeOptions, encode_dataset

    model = VQGANLC.from_pretrained(model_dir)
    with torch.inference_mode():
        for _ in range(3):
            model.encode(torch.zeros(batch, 3, size, size))
    base = EncodeOptions(image_size=size, batch_size=batch, shard_size=256, num_workers=1)
    lat = EncodeOptions(image_size=size, batch_size=batch, shard_size=256, num_workers=1, latents="float16")
    modes = {"folder": (folder, base), "wds": ("wds:" + tars, base), "latents": (folder, lat)}

    def cpu_seconds() -> float:  # this process and its finished children (the decoding workers)
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def once(mode: str) -> float:
        data, opts = modes[mode]
        out = tempfile.mkdtemp()
        t, c = time.perf_counter(), cpu_seconds()
        encode_dataset(model, data, out, options=opts, progress=False, device="cpu")
        dt = time.perf_counter() - t
        cpu[mode] = min(cpu.get(mode, float("inf")), cpu_seconds() - c)
        shutil.rmtree(out)
        return dt

    cpu: dict[str, float] = {}
    if what.startswith("peak-"):
        before = rss_mb()
        once(what[5:])
        return {"extra_peak_mb": max(0.0, peak_mb() - before)}
    best = {m: float("inf") for m in modes}
    for _ in range(repeat):
        for m in modes:
            best[m] = min(best[m], once(m))
    return {**{f"{m}_seconds": v for m, v in best.items()}, **{f"{m}_cpu_seconds": v for m, v in cpu.items()}}


def sources_study(a: argparse.Namespace) -> None:
    n, size, batch = (256 if not a.quick else 128), 64, 32
    repeat = 3 if not a.quick else 2
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        md = tmp / "model-tiny"
        build_model("tiny", md)
        for mult in (1, 4):
            folder = tmp / f"img-{n * mult}"
            make_folder(folder, n * mult)
            tars = make_tars(folder, tmp / f"tars-{n * mult}")
            t = run_child(__file__, "sources", f"time{repeat}", str(md), str(folder), tars, str(size), str(batch))
            pf = run_child(__file__, "sources", "peak-folder", str(md), str(folder), tars, str(size), str(batch))
            pw = run_child(__file__, "sources", "peak-wds", str(md), str(folder), tars, str(size), str(batch))
            k = n * mult
            rows.append({"images": k, "folder img/s": k / t["folder_seconds"], "wds img/s": k / t["wds_seconds"],
                         "wds / folder": t["folder_seconds"] / t["wds_seconds"],
                         "ids+latents img/s": k / t["latents_seconds"],
                         "latents overhead %": 100 * (t["latents_seconds"] / t["folder_seconds"] - 1),
                         "wds / folder CPU s": t["wds_cpu_seconds"] / t["folder_cpu_seconds"],
                         "latents CPU overhead %": 100 * (t["latents_cpu_seconds"] / t["folder_cpu_seconds"] - 1),
                         "folder peak MB": pf["extra_peak_mb"], "wds peak MB": pw["extra_peak_mb"], "raw": t})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "raw"}), flush=True)
    cols = ["images", "folder img/s", "wds img/s", "wds / folder", "ids+latents img/s", "latents overhead %",
            "wds / folder CPU s", "latents CPU overhead %", "folder peak MB", "wds peak MB"]
    print_table(rows, cols)
    load_after = os.getloadavg()
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_after}")
    write_json("encode_sources", {"rows": rows, "load_before": load_before, "load_after": load_after}, a.json)


def _steal_ticks() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])  # cpu  user nice system idle iowait irq softirq steal


def child(decode: str, pipeline: str, model_dir: str, folder: str, size: int, batch: int, warmup: int) -> dict:
    """One fresh process, as a user's run: warm-up, ``encode_dataset`` and its extra peak memory, then the
    model alone on the same images decoded beforehand (both in one process: see the module docstring)."""
    import torch

    from vqgan_lc import VQGANLC
    from vqgan_lc.data import Preprocessing, list_images, load_rgb
    from vqgan_lc.tokens import EncodeOptions, encode_dataset

    model = VQGANLC.from_pretrained(model_dir)
    images = list_images(folder)
    n = len(images)
    with torch.inference_mode():
        for _ in range(warmup):
            model.encode(torch.zeros(batch, 3, size, size))
    kind, count = pipeline.split("=")
    out = tempfile.mkdtemp()
    opts = EncodeOptions(image_size=size, batch_size=batch, shard_size=256, jpeg_draft=decode == "draft",
                         num_workers=int(count) if kind == "workers" else 0,
                         cpu_parallel_batches=int(count) if kind == "parallel" else 0)
    steal0, t0 = _steal_ticks(), time.perf_counter()
    base = rss_mb()
    t = time.perf_counter()
    encode_dataset(model, folder, out, options=opts, progress=False)
    e2e = time.perf_counter() - t
    extra_peak = max(0.0, peak_mb() - base)
    shutil.rmtree(out)

    pre = Preprocessing(size)
    x = torch.stack([pre(load_rgb(images.root / p)) for p in images.paths])
    with torch.inference_mode():
        t = time.perf_counter()
        for s in range(0, n, batch):
            model.encode(x[s : s + batch])
        alone = time.perf_counter() - t
    steal = (_steal_ticks() - steal0) / os.sysconf("SC_CLK_TCK") / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
    return {"e2e_seconds": e2e, "extra_peak_mb": extra_peak, "model_seconds": alone, "e2e / model": alone / e2e,
            "steal_fraction": steal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=7)
    ap.add_argument("--sources", action="store_true", help="issue 16: folder vs wds: tars and --latents (tiny@64px)")
    ap.add_argument("--quick", action="store_true", help="tiny@64px on 64 and 256 images only")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes of the default pipeline")
    ap.add_argument("--parallel-batches", type=int, default=os.cpu_count() or 1,
                    help="--cpu-parallel-batches of the parallel pipeline (default: the core count)")
    ap.add_argument("--decode", choices=("exact", "draft", "both"), default="both",
                    help="tiny rows with the default full decode, with --jpeg-draft, or both (default)")
    ap.add_argument("--pipeline", choices=("workers", "parallel", "both"), default="both",
                    help="tiny rows with the default pipeline, with --cpu-parallel-batches, or both (default)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.child and a.child[0] == "sources":
        _, what, md, folder, tars, size, batch = a.child
        timing = what.startswith("time")  # "time3": best of 3
        print(json.dumps(source_child("time" if timing else what, md, folder, tars, int(size), int(batch),
                                      int(what[4:]) if timing else 1)))
        return
    if a.sources:
        sources_study(a)
        return
    if a.child:
        decode, pipeline, md, folder, size, batch, warmup = a.child
        print(json.dumps(child(decode, pipeline, md, folder, int(size), int(batch), int(warmup))))
        return
    decodes = ["exact", "draft"] if a.decode == "both" else [a.decode]
    pipelines = {"workers": [f"workers={a.workers}"], "parallel": [f"parallel={a.parallel_batches}"]}.get(
        a.pipeline, [f"workers={a.workers}", f"parallel={a.parallel_batches}"])
    tiny_modes = [(d, p) for p in pipelines for d in decodes]
    # preset, px, batch, images at 1x, (decode, pipeline) modes, warm-up batches
    cases = [("tiny", 64, 32, 512, tiny_modes, 3), ("vqgan-lc-f16-100k", 256, 8, 16, [("exact", f"workers={a.workers}")], 1)]
    if a.quick:
        cases = [("tiny", 64, 32, 64, tiny_modes, 3)]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset, size, batch, n, modes, warmup in cases:
            md = tmp / f"model-{preset}"
            build_model(preset, md)
            for mult in (1, 4):
                folder = tmp / f"img-{n * mult}"
                if not folder.exists():
                    make_folder(folder, n * mult)
                for decode, pipeline in modes:
                    r = run_child(__file__, decode, pipeline, str(md), str(folder), str(size), str(batch), str(warmup))
                    ratio = r["e2e / model"]
                    rows.append({"model": f"{preset} @{size}px", "images": n * mult, "batch": batch, "decode": decode,
                                 "pipeline": pipeline, "model-only img/s": n * mult / r["model_seconds"],
                                 "end-to-end img/s": n * mult / r["e2e_seconds"], "e2e / model": ratio,
                                 ">= 0.85": "yes" if ratio >= 0.85 else "no",
                                 "e2e extra peak MB": r["extra_peak_mb"], "steal %": 100 * r["steal_fraction"],
                                 "raw": r})
    load_after = os.getloadavg()
    print_table(rows, ["model", "images", "batch", "decode", "pipeline", "model-only img/s", "end-to-end img/s",
                       "e2e / model", ">= 0.85", "e2e extra peak MB", "steal %"])
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_after}")
    write_json("encode", {"rows": rows, "load_before": load_before, "load_after": load_after}, a.json)


if __name__ == "__main__":
    main()
