"""The files an evaluation writes: ``report.json``, ``report.md``, ``per_image.csv``, two PNGs.

A metric entry in ``report.json`` is either ``{"computed": true, "value": ..., ...}`` or
``{"computed": false, "reason": "...", "enable_with": "--option PATH"}``: a metric whose weights are
missing is reported, never silently dropped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_text, read_format_json
from ..errors import UnknownFormatError
from ..formats import Description

REPORT_FORMAT = "vqgan-lc-eval-report"
REPORT_FORMAT_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PER_IMAGE_CSV = "per_image.csv"
GRID_PNG = "reconstructions.png"
USAGE_PNG = "code_usage.png"
REPORT_NAMES = tuple(re.escape(n) for n in (REPORT_JSON, REPORT_MD, PER_IMAGE_CSV, GRID_PNG, USAGE_PNG))
"""The names an evaluation writes into its folder (regular expressions, for ``prepare_output_dir``)."""

# Display order, label and number format of the metrics in report.md.
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "psnr_y": ("PSNR, Y channel (official)", "{:.2f} dB"),
    "psnr_rgb": ("PSNR, RGB", "{:.2f} dB"),
    "ssim": ("SSIM (RGB)", "{:.4f}"),
    "lpips_alex": ("LPIPS, AlexNet", "{:.4f}"),
    "lpips_vgg": ("LPIPS, VGG16", "{:.4f}"),
    "rfid": ("rFID", "{:.2f}"),
    "utilization": ("Codebook utilization", "{:.2%}"),
    "perplexity": ("Code perplexity", "{:.1f}"),
    "encode_throughput": ("Encode throughput", "{:.1f} images/s"),
    "decode_throughput": ("Decode throughput", "{:.1f} images/s"),
}


def computed(value: float, **info: Any) -> dict[str, Any]:
    """A computed metric entry."""
    return {"computed": True, "value": float(value), **info}


def not_computed(reason: str, enable_with: str | None = None) -> dict[str, Any]:
    """A metric that was not computed, why, and the option that would enable it."""
    entry: dict[str, Any] = {"computed": False, "reason": reason}
    if enable_with:
        entry["enable_with"] = enable_with
    return entry


# ----------------------------------------------------------------------------------------- writers
def write_json(path: Path, report: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:  # JSON has no NaN/inf
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    atomic_write_text(path, json.dumps(clean(report), indent=2, sort_keys=False) + "\n")


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m, d = report["model"], report["data"]
    lines = [
        "# Reconstruction evaluation",
        "",
        f"- **Model**: `{m['path']}` -- quantizer `{m['quantizer']}`, {m['codebook_size']:,} codes, "
        f"f{m['downsample_factor']}, config hash `{m['config_hash']}`",
        f"- **Data**: `{d['path']}` ({d['mode']} mode{', tokens from `' + str(d['tokens']) + '`' if d.get('tokens') else ''})"
        f" -- {d['images']:,} images evaluated, {d['skipped']:,} skipped, {d['image_size']} px, "
        f"{d['grid'][0]}x{d['grid'][1]} tokens per image, {d['tokens_counted']:,} tokens counted for usage",
        f"- **Protocol**: {report.get('protocol', 'standard')}",
        "",
        "| Metric | Value | Notes |",
        "|---|---|---|",
    ]
    for key, entry in report["metrics"].items():
        label, fmt = METRIC_LABELS.get(key, (key, "{:.4g}"))
        if entry.get("computed"):
            value = fmt.format(entry["value"]) if entry.get("value") is not None else "n/a"
            note = entry.get("note", "")
        else:
            value = "not computed"
            note = entry.get("reason", "") + (f" (enable with `{entry['enable_with']}`)" if entry.get("enable_with") else "")
        lines.append(f"| {label} | {value} | {note.replace('|', '/')} |")
    lines += ["", "## Implementation notes", ""]
    lines += [f"- **{k}**: {v}" for k, v in report["implementation"].items()]
    if report["data"].get("skipped_files"):
        lines += ["", "## Skipped images", ""]
        lines += [f"- `{s['path']}`: {s['reason']}" for s in report["data"]["skipped_files"][:50]]
    lines += ["", f"Files: {', '.join('`' + f + '`' for f in report['files'].values())}", ""]
    path.write_text("\n".join(lines))


def write_per_image_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """One row per evaluated image: ``path`` then the per-image metric columns that were computed."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *columns])
        for r in rows:
            w.writerow([r["path"], *(f"{r[c]:.6f}" for c in columns)])


def save_grid(path: Path, reconstructions: torch.Tensor, originals: torch.Tensor | None = None, pad: int = 2) -> None:
    """Originals (top row) over reconstructions (bottom row): ``(n, 3, H, W)`` uint8 each, n <= 8 shown."""
    from PIL import Image

    rows = [originals, reconstructions] if originals is not None else [reconstructions]
    n = min(8, len(reconstructions))
    _, _, h, w = reconstructions.shape
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = imgs[c].permute(1, 2, 0).cpu().numpy()
    Image.fromarray(canvas).save(path)


def save_usage_plot(path: Path, counts: torch.Tensor) -> None:
    """Usage counts of every code sorted in decreasing order, log y (unused codes lie beyond the curve)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = np.sort(counts.cpu().numpy().astype(np.int64))[::-1]
    n, used = len(c), int((c > 0).sum())
    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if used:
        ax.step(np.arange(1, used + 1), c[:used], where="post", color="tab:blue", lw=1.2)
        ax.set_yscale("log")
    ax.set_xlim(0, n + 1)
    if used < n:
        ax.axvspan(used + 0.5, n + 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.text(0.98, 0.95, f"{n - used:,} codes never used", transform=ax.transAxes, ha="right", va="top",
                color="tab:red")
    p = c[c > 0] / max(1, c.sum())
    ppl = float(np.exp(-(p * np.log(p)).sum())) if used else 0.0
    ax.set_title(f"Code usage: {used:,} of {n:,} codes used ({used / n:.1%}), perplexity {ppl:,.1f}")
    ax.set_xlabel("code rank (by usage)")
    ax.set_ylabel("tokens (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_report(
    out: str | os.PathLike,
    report: dict[str, Any],
    *,
    per_image: Sequence[dict[str, Any]],
    per_image_columns: Sequence[str],
    counts: torch.Tensor,
    reconstructions: torch.Tensor | None,
    originals: torch.Tensor | None,
) -> dict[str, Any]:
    """Write every report file into ``out``; returns ``report`` with ``files`` filled in."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": REPORT_JSON, "markdown": REPORT_MD, "per_image": PER_IMAGE_CSV, "usage_plot": USAGE_PNG}
    if reconstructions is not None and len(reconstructions):
        save_grid(out / GRID_PNG, reconstructions, originals)
        files["grid"] = GRID_PNG
    report = {**report, "files": files}
    write_per_image_csv(out / PER_IMAGE_CSV, per_image, per_image_columns)
    save_usage_plot(out / USAGE_PNG, counts)
    write_markdown(out / REPORT_MD, report)
    write_json(out / REPORT_JSON, report)
    return report


# ----------------------------------------------------------------------------------------- reading
def read_report(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``report.json`` of an evaluation output directory, after checking format and version."""
    return read_format_json(Path(directory) / REPORT_JSON, REPORT_FORMAT, REPORT_FORMAT_VERSION,
                            what="vqgan-lc evaluation report", error=UnknownFormatError,
                            missing=f"{directory} has no {REPORT_JSON}: not an evaluation report (`vqgan-lc evaluate`)")


def describe(path: Path) -> Description:
    """``vqgan-lc info`` of an evaluation report: the model, the data and every computed metric's value."""
    r = read_report(path)
    m, d = r.get("model") or {}, r.get("data") or {}
    fields: dict[str, Any] = {
        "model": m.get("path"),
        "codebook_size": m.get("codebook_size"),
        "config_hash": m.get("config_hash"),
        "mode": d.get("mode"),
        "images": d.get("images"),
        "image_size": d.get("image_size"),
    }
    for name, entry in (r.get("metrics") or {}).items():
        if isinstance(entry, dict) and entry.get("computed"):
            fields[name] = entry.get("value")
    return Description("evaluation report", REPORT_FORMAT, REPORT_FORMAT_VERSION, fields,
                       {k: r[k] for k in ("model", "data", "options") if k in r})


__all__ = [
    "GRID_PNG",
    "PER_IMAGE_CSV",
    "REPORT_FORMAT",
    "REPORT_FORMAT_VERSION",
    "REPORT_JSON",
    "REPORT_MD",
    "USAGE_PNG",
    "computed",
    "describe",
    "not_computed",
    "read_report",
    "save_grid",
    "save_usage_plot",
    "write_report",
]
