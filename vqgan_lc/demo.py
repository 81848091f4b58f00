"""The offline demo (``vqgan-lc demo``, ``make demo``): the whole pipeline on scikit-image's bundled photographs.

Every stage after the first is one ``vqgan-lc`` command, run in this process exactly as a user would
type it, on the real file formats:

1. tiles of the bundled photographs -> ``data/train`` and held-out ``data/val`` (one folder per photo)
2. ``vqgan-lc build-codebook``: k-means over 8x8 pixel patches (one per token) -> ``codebook.safetensors``
3. ``vqgan-lc train``: the ``tiny`` preset with Lightning (``train.yaml``, written here) -> ``model/``
4. ``vqgan-lc encode``: the held-out tiles -> ``tokens/``
5. ``vqgan-lc decode``: the first tokens back to PNGs -> ``decoded/``
6. ``vqgan-lc evaluate``: PSNR, SSIM, utilization, ... of the stored tokens -> ``eval/``
7. ``vqgan-lc encode``: the training tiles -> ``tokens_train/``: codebook utilization over training
   tokens, as the paper's Table 2 counts it (at least 32 tokens per code at the default settings)

and writes ``report.md`` (metrics, the commands, the stage times), ``reconstructions.png``,
``code_usage.png`` and ``loss_curve.png``. Same seed, same numbers (``metrics.json``). Needs the ``dev``
extra (scikit-image, faiss, Lightning, matplotlib). No pretrained weights: the perceptual loss, LPIPS
and rFID are off and reported as not computed.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("vqgan_lc.demo")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
TILE = 80
IMAGE_SIZE = 64
# What each stage's files are called: removed before a run so that a rerun gives the same numbers.
OUTPUTS = ("data", "codebook.safetensors", "codebook.safetensors.features", "checkpoints", "csv", "tensorboard",
           "reconstructions", "model", "tokens", "tokens_train", "decoded", "eval", "train.yaml", "config.yaml", "report.md",
           "metrics.json", "reconstructions.png", "code_usage.png", "loss_curve.png")
# Seconds each stage takes on 2 idle CPU cores at the default settings (training: per generator step);
# the time-left estimate scales them by how fast the finished stages went.
EXPECTED_S = {"tiles": 2.0, "codebook": 2.0, "train_per_step": 1.1, "encode": 2.0, "decode": 1.0, "evaluate": 3.0,
              "encode_train": 4.0}
# Training tiles overlap (stride TILE / 2): 310 tiles = 19,840 tokens, 77.5 per code at k = 256, enough
# to count the codes the model uses on its training data (benchmarks/utilization.py: below ~32 tokens
# per code the count, not the model, limits utilization). Held-out tiles do not overlap.
TRAIN_STRIDE = TILE // 2
# Codebook features: 8x8 pixel patches, the footprint of one token of the f8 model (64 vectors of 192
# values per tile), so that the codebook covers what the tokens see. With 16x16 patches (4 per tile,
# 768-d) the codes' projection matched the latents' scale after 300 steps but 30% of the codes stayed
# away from every training latent: 70.5% used over training tokens (k = 512); 8x8 patches: 79.7%.
# k = 256 and 400 steps (this default): see README.
PATCH = 8


def write_tiles(out: Path, size: int = TILE, train_stride: int = TRAIN_STRIDE) -> tuple[Path, Path]:
    """``size`` px tiles of each photograph (resized to 320 px short side): the top 80% of the rows ->
    ``train/<photo>/`` (every ``train_stride`` px: overlapping tiles when it is below ``size``), the rest
    -> ``val/<photo>/`` (held out, non-overlapping)."""
    import skimage.data
    from PIL import Image

    train, val = out / "train", out / "val"
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        img = Image.fromarray(np.ascontiguousarray(a))
        s = 320 / min(img.size)
        arr = np.asarray(img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.Resampling.BICUBIC))
        h, w = arr.shape[:2]
        cut = int(h * 0.8) // size * size
        for split, (y0, y1), stride in ((train, (0, cut), train_stride), (val, (cut, h), size)):
            d = split / name
            d.mkdir(parents=True, exist_ok=True)
            for y in range(y0, y1 - size + 1, stride):
                for x in range(0, w - size + 1, stride):
                    Image.fromarray(arr[y : y + size, x : x + size]).save(d / f"{y:04d}_{x:04d}.png")
    return train, val


def train_config(out: Path, train_dir: Path, val_dir: Path, steps: int, seed: int) -> dict:
    """The ``vqgan-lc train`` config of the demo: the shipped tiny_cpu recipe with this run's paths and length."""
    per_epoch = max(steps // 3, 1)  # three validation passes
    batch = 8
    lr = 5.0e-4
    return {
        "seed_everything": seed,
        "model": {"model": {"preset": "tiny", "codebook": str(out / "codebook.safetensors"), "codebook_std": 0.03},
                  "loss": {"perceptual_weight": 0.0, "disc_start": max(steps // 2, 1)},
                  # min_lr = lr: the lr holds after the warm-up. The official cosine reaches 0 at the end of
                  # the run; in a run this short that stops the projector while it is still spreading the
                  # codes over the latents (benchmarks/utilization.py, docs/benchmarks.md).
                  "optim": {"warmup_steps": max(steps // 15, 1), "max_steps": steps, "lr": lr, "min_lr": lr},
                  "num_grid_images": 8},
        "data": {"data": str(train_dir), "val_data": str(val_dir), "image_size": IMAGE_SIZE, "batch_size": batch,
                 "num_workers": 0, "samples_per_epoch": per_epoch * batch, "seed": seed},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": -1,
                    "default_root_dir": str(out), "log_every_n_steps": 5, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "vqgan_lc.train.StepProgress",
                                   "init_args": {"every_n_steps": max(min(50, steps // 4), 1),
                                                 "label": "  train"}}]},
        "checkpoint": {"every_n_epochs": 1},
        "export": {"inference_only": False},
    }


class _Clock:
    """Stage banners with the time spent and an estimate of the time left."""

    def __init__(self, expected: dict[str, float]) -> None:
        self.expected = expected
        self.names = list(expected)
        self.t0 = time.perf_counter()
        self.done: dict[str, float] = {}
        self._start = self.t0

    def start(self, name: str, what: str) -> None:
        now = time.perf_counter()
        i = self.names.index(name)
        expected_done = sum(self.expected[n] for n in self.done)
        # Short stages say little about this machine's speed: scale only once the training has run.
        speed = min(max((now - self.t0) / expected_done, 0.5), 5.0) if expected_done >= 30 else 1.0
        left = sum(self.expected[n] for n in self.names[i:]) * speed
        log.info("[%d/%d] %s  (%s elapsed, about %s left)", i + 1, len(self.names), what,
                 _fmt(now - self.t0), _fmt(left))
        self._start = now

    def stop(self, name: str) -> None:
        self.done[name] = time.perf_counter() - self._start


def _fmt(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _run(argv: list[str], commands: list[str]) -> None:
    from .cli.main import main as cli_main

    commands.append("vqgan-lc " + " ".join(a if a and " " not in a else repr(a) for a in argv))
    log.info("  $ %s", commands[-1])
    rc = cli_main(argv)
    if rc:
        raise SystemExit(f"demo: `{commands[-1]}` failed with exit status {rc}")


def run_demo(out: str | Path = "runs/demo", steps: int = 400, k: int = 256, seed: int = 0) -> dict:
    """Run the whole pipeline into ``out``; returns the metrics written to ``metrics.json``."""
    import torch
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # only what this demo writes
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    torch.manual_seed(seed)
    expected = {"tiles": EXPECTED_S["tiles"], "codebook": EXPECTED_S["codebook"],
                "train": EXPECTED_S["train_per_step"] * steps,
                **{n: EXPECTED_S[n] for n in ("encode", "decode", "evaluate", "encode_train")}}
    clock = _Clock(expected)
    commands: list[str] = []
    times: dict[str, float] = {}

    clock.start("tiles", "writing tiles of the bundled photographs")
    train_dir, val_dir = write_tiles(out / "data")
    n_train, n_val = (sum(1 for _ in d.rglob("*.png")) for d in (train_dir, val_dir))
    log.info("  %d training tiles, %d held-out tiles (%d px) from %d photographs", n_train, n_val, TILE, len(PHOTOS))
    clock.stop("tiles")

    clock.start("codebook", f"codebook: k-means (K={k}) over {PATCH}x{PATCH} pixel patches of the training tiles")
    _run(["build-codebook", "--data", str(train_dir), "--extractor", "pixels", "--image-size", str(IMAGE_SIZE),
          "--patch-size", str(PATCH), "--k", str(k), "--niter", "20", "--seed", str(seed), "--workers", "0",
          "--out", str(out / "codebook.safetensors"), "--no-progress"], commands)
    clock.stop("codebook")

    clock.start("train", f"training the tiny preset for {steps} generator steps (Lightning, L1 + quantizer + GAN)")
    cfg_path = out / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(train_config(out, train_dir, val_dir, steps, seed), sort_keys=False))
    t = time.perf_counter()
    _run(["train", "--config", str(cfg_path)], commands)
    times["train_s"] = time.perf_counter() - t
    clock.stop("train")
    model_dir = out / "model"

    clock.start("encode", "encoding the held-out tiles to a token directory")
    t = time.perf_counter()
    _run(["encode", "--model", str(model_dir), "--data", str(val_dir), "--out", str(out / "tokens"),
          "--image-size", str(IMAGE_SIZE), "--batch-size", "32", "--num-workers", "0", "--shard-size", "256"], commands)
    times["encode_s"] = time.perf_counter() - t
    clock.stop("encode")

    clock.start("decode", "decoding the first 16 token maps to PNGs")
    _run(["decode", "--model", str(model_dir), "--tokens", str(out / "tokens"), "--out", str(out / "decoded"),
          "--indices", "0:16"], commands)
    clock.stop("decode")

    clock.start("evaluate", "evaluating the stored tokens against the held-out tiles")
    _run(["evaluate", "--model", str(model_dir), "--tokens", str(out / "tokens"), "--data", str(val_dir),
          "--out", str(out / "eval"), "--num-workers", "0"], commands)
    clock.stop("evaluate")

    clock.start("encode_train", "encoding the training tiles: codebook utilization over training tokens")
    _run(["encode", "--model", str(model_dir), "--data", str(train_dir), "--out", str(out / "tokens_train"),
          "--image-size", str(IMAGE_SIZE), "--batch-size", "32", "--num-workers", "0", "--shard-size", "1024"], commands)
    train_usage = token_usage(out / "tokens_train", k)
    clock.stop("encode_train")

    report = json.loads((out / "eval" / "report.json").read_text())
    history = _read_history(out / "csv")
    metrics = _metrics(report, history, steps)
    metrics.update({f"train_{key}": value for key, value in train_usage.items()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("reconstructions.png", "code_usage.png"):
        if (out / "eval" / name).is_file():
            shutil.copyfile(out / "eval" / name, out / name)
    _loss_curve(history, out / "loss_curve.png")
    total = time.perf_counter() - clock.t0
    _write_report(out, report, metrics, commands, clock.done, total, n_train, n_val, steps, k, seed)
    log.info("done in %s: PSNR %.2f dB, SSIM %.3f, %d of %d codes used on training tokens (%.1f%%) -> %s",
             _fmt(total), metrics["psnr_rgb_db"], metrics["ssim"], metrics["train_codes_used"],
             metrics["codebook_size"], 100 * metrics["train_utilization"], out / "report.md")
    return metrics


def token_usage(tokens_dir: Path, codebook_size: int) -> dict[str, float | int]:
    """Utilization (distinct ids / ``codebook_size``), codes used, tokens and tokens per code of a token directory."""
    from .tokens import open_tokens

    ids = np.asarray(open_tokens(tokens_dir)[:], dtype=np.int64).reshape(-1)
    used = int(np.unique(ids).size)
    return {"utilization": round(used / codebook_size, 4), "codes_used": used, "tokens": int(ids.size),
            "tokens_per_code": round(ids.size / codebook_size, 2)}


def _read_history(csv_root: Path) -> dict[str, list[tuple[int, float]]]:
    """(generator step, value) series from the CSV logger: ``train/rec_loss`` per logged step and
    ``val/rec_loss``, ``val/utilization`` per validation pass."""
    files = sorted(csv_root.glob("version_*/metrics.csv"))
    series: dict[str, list[tuple[int, float]]] = {"train/rec_loss": [], "val/rec_loss": [], "val/utilization": []}
    if not files:
        return series
    last_gen = 0
    with open(files[-1], newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/gen_step"):
                last_gen = int(float(row["train/gen_step"]))
            for key in series:
                if row.get(key):
                    series[key].append((last_gen, float(row[key])))
    return series


def _value(report: dict, key: str) -> float | None:
    entry = report["metrics"].get(key, {})
    return entry.get("value") if entry.get("computed") else None


def _metrics(report: dict, history: dict[str, list[tuple[int, float]]], steps: int) -> dict:
    """The numbers a rerun with the same seed reproduces (no timings)."""
    util = report["metrics"]["utilization"]
    val = history["val/rec_loss"]
    r = lambda v, n: None if v is None else round(float(v), n)  # noqa: E731
    return {
        "train_steps": steps,
        "val_images": report["data"]["images"],
        "val_tokens": report["data"]["tokens_counted"],
        "psnr_rgb_db": r(_value(report, "psnr_rgb"), 3),
        "psnr_y_db": r(_value(report, "psnr_y"), 3),
        "ssim": r(_value(report, "ssim"), 4),
        "utilization": r(util["value"], 4),
        "codes_used": util["used"],
        "codebook_size": util["codebook_size"],
        "perplexity": r(_value(report, "perplexity"), 2),
        "val_l1_first": r(val[0][1], 4) if val else None,
        "val_l1_first_step": val[0][0] if val else None,
        "val_l1_last": r(val[-1][1], 4) if val else None,
        "val_l1_last_step": val[-1][0] if val else None,
        "not_computed": sorted(k for k, v in report["metrics"].items() if not v.get("computed")),
    }


def _loss_curve(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        log.warning("matplotlib missing: no loss curve")
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    tr = history["train/rec_loss"]
    if tr:
        s, v = np.array(tr).T
        w = min(10, len(v))
        ax.plot(s[w - 1 :], np.convolve(v, np.ones(w) / w, mode="valid"), label=f"train L1 ({w}-point mean)")
    if history["val/rec_loss"]:
        s, v = np.array(history["val/rec_loss"]).T
        ax.plot(s, v, "o-", label="held-out L1")
    ax.set(xlabel="generator step", ylabel="L1 reconstruction loss", title="training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_report(out: Path, report: dict, metrics: dict, commands: list[str], times: dict[str, float],
                  total: float, n_train: int, n_val: int, steps: int, k: int, seed: int) -> None:
    m = report["metrics"]

    def cell(key: str, fmt: str) -> str:
        e = m.get(key, {})
        if e.get("computed") and e.get("value") is not None:
            return fmt.format(e["value"])
        return "not computed: " + e.get("reason", "") + (f" (enable with `{e['enable_with']}`)" if e.get("enable_with") else "")

    util = m["utilization"]
    rows = [
        ("PSNR (RGB)", cell("psnr_rgb", "{:.2f} dB")),
        ("PSNR (Y, the official protocol)", cell("psnr_y", "{:.2f} dB")),
        ("SSIM", cell("ssim", "{:.4f}")),
        ("LPIPS (AlexNet)", cell("lpips_alex", "{:.4f}")),
        ("LPIPS (VGG)", cell("lpips_vgg", "{:.4f}")),
        ("rFID", cell("rfid", "{:.2f}")),
        ("Codebook utilization over training tokens (as the paper's Table 2)",
         f"{metrics['train_utilization'] * 100:.2f}% ({metrics['train_codes_used']:,} of {util['codebook_size']:,} "
         f"codes, {metrics['train_tokens']:,} tokens of the {n_train} training tiles, "
         f"{metrics['train_tokens_per_code']:g} per code)"),
        ("Codebook utilization over held-out tokens", f"{util['value'] * 100:.2f}% ({util['used']:,} of "
                                                      f"{util['codebook_size']:,} codes, {util['tokens']:,} tokens)"),
        ("Code perplexity", cell("perplexity", "{:.1f}")),
        ("Held-out L1 reconstruction loss", f"{metrics['val_l1_first']} (step {metrics['val_l1_first_step']}) -> "
                                            f"{metrics['val_l1_last']} (step {metrics['val_l1_last_step']})"),
        ("Decode throughput (model only)", cell("decode_throughput", "{:.1f} images/s")),
        ("Encode (whole `vqgan-lc encode` command)", f"{n_val / max(times.get('encode', 1e-9), 1e-9):.1f} images/s"),
    ]
    stage_rows = "\n".join(f"| {name} | {_fmt(s)} |" for name, s in times.items())
    text = f"""# vqgan-lc demo

A tiny VQGAN-LC ({IMAGE_SIZE} px -> {report['data']['grid'][0]}x{report['data']['grid'][1]} tokens, a frozen
{util['codebook_size']:,} x {3 * PATCH * PATCH} codebook from k-means over {PATCH}x{PATCH} pixel patches, a trainable linear projector)
trained for {steps} generator steps (constant lr after the warm-up) on {n_train} overlapping tiles of
scikit-image's bundled photographs, then evaluated on {n_val} held-out tiles (the bottom fifth of every
photograph) through its token directory, and its code use counted on the training tiles. Seed {seed}:
a rerun gives the same numbers (`metrics.json`); only the times change.

| metric | value |
|---|---|
""" + "\n".join(f"| {a} | {b} |" for a, b in rows) + f"""

Reconstructions (top: held-out originals, bottom: decoded from the stored tokens):

![reconstructions](reconstructions.png)

![loss curve](loss_curve.png) ![code usage](code_usage.png)

## The commands that produced it

`python -m vqgan_lc.demo --out {out} --steps {steps} --k {k} --seed {seed}` wrote the tiles under
`{out / 'data'}`, the training config `{out / 'train.yaml'}`, then ran:

```
""" + "\n".join(commands) + f"""
```

Every file is in the package's real formats: `codebook.safetensors` (codebook file), `model/` (model
directory, full weights: `vqgan-lc train --config {out / 'train.yaml'} --init-from {out / 'model'}`
fine-tunes it), `tokens/` (token
directory), `eval/` (`report.json`, `report.md`, `per_image.csv`), `checkpoints/last.ckpt`
(`vqgan-lc train --config {out / 'train.yaml'} --ckpt-path last` resumes), `csv/` logs.
Perceptual loss, LPIPS and rFID need pretrained weights that this offline demo does not have.

## Time per stage

| stage | time |
|---|---|
{stage_rows}
| total | {_fmt(total)} |
"""
    (out / "report.md").write_text(text)
