"""Folders of hostile files for the bad-inputs suite (tests/test_bad_inputs.py): the audit's list
(``../shared/reference/audits/reliability.md``), each built from a real photograph or by hand, and a
snapshot of a tree (bytes, sizes, modes and links, never following a link) to prove a command left the
user's files alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import photo
from PIL import Image

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


def _jpeg(seed: int, size: int = 96) -> bytes:
    img = photo(("astronaut", "coffee", "chelsea")[seed % 3])
    y, x = 40 * seed, 30 * seed
    buf = io.BytesIO()
    Image.fromarray(img[y : y + size, x : x + size]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _huge_png_header(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb) over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def unreadable_images(root: Path) -> Path:
    """A class folder of files that look like images and are not: a truncated JPEG, a git-lfs pointer named
    .png, a zero-byte .jpg, a text file named .jpg, a 60000x60000 PNG header, a directory named x.jpg, a
    symlink loop and a dangling link. No image in it can be read."""
    d = root / "class_a"
    d.mkdir(parents=True)
    (d / "truncated.jpg").write_bytes(_jpeg(0)[:600])
    (d / "pointer.png").write_bytes(LFS_POINTER)
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("these are my notes, not a picture\n")
    (d / "bomb.png").write_bytes(_huge_png_header())
    (d / "x.jpg").mkdir()
    (d / "loop").symlink_to("..")
    (d / "dangling.png").symlink_to(d / "nowhere.png")
    return root


def readable_images(root: Path, n: int = 4) -> Path:
    """``n`` real JPEG photo crops in two class folders, plus a 16-bit grayscale PNG (readable)."""
    for i in range(n):
        d = root / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img_{i}.jpg").write_bytes(_jpeg(i + 1))
    g = photo("coffee")[..., 0]  # a gray 8-bit base, stored as 16 bits
    Image.fromarray(g[:96, :96].astype(np.uint16) * 257).save(root / "class_0" / "deep16.png")
    return root


def badly_named_images(root: Path) -> dict[str, Path]:
    """One folder per hostile file name, each holding a readable JPEG under that name: a carriage return, a
    form feed, U+2028 (a line separator for ``str.splitlines``) and non-UTF-8 bytes (an old zip's
    ``caf\\xe9.jpg``)."""
    names = {"cr": b"a\rb.jpg", "formfeed": b"a\x0cb.jpg", "u2028": "a\u2028b.jpg".encode(), "latin1": b"caf\xe9.jpg"}
    out = {}
    for key, name in names.items():
        d = root / key
        d.mkdir(parents=True)
        (d / "good.jpg").write_bytes(_jpeg(1))
        with open(os.path.join(os.fsencode(d), name), "wb") as fh:
            fh.write(_jpeg(2))
        out[key] = d
    return out


def hostile_weight_files(root: Path) -> dict[str, Path]:
    """Files passed where a model, checkpoint or codebook belongs: zero bytes, a git-lfs pointer, text,
    a truncated zip, and model directories whose ``model.safetensors`` is one of those."""
    root.mkdir(parents=True)
    files = {"zero.pth": b"", "pointer.pth": LFS_POINTER, "text.ckpt": b"not a checkpoint\n",
             "truncated.pth": b"PK\x03\x04" + b"\0" * 40}
    out = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        out[name] = root / name
    for name, data in (("model-zero", b""), ("model-pointer", LFS_POINTER)):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"format": "vqgan-lc-model", "format_version": 1, "config": {}}))
        (d / "model.safetensors").write_bytes(data)
        out[name] = d
    return out


def hostile_token_dirs(tok: Path, root: Path) -> dict[str, Path]:
    """Token directories that are not usable: empty, a git-lfs pointer as manifest, a manifest that is a
    JSON list, shards not a list, a truncated shard (its sha256 then differs), labels missing."""
    import shutil

    root.mkdir(parents=True)
    out = {"empty": root / "empty"}
    out["empty"].mkdir()

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(tok, d)
        out[name] = d
        return d

    (copy("pointer") / "manifest.json").write_bytes(LFS_POINTER)
    (copy("list") / "manifest.json").write_text("[1, 2]")
    d = copy("shards-str")
    m = json.loads((d / "manifest.json").read_text())
    m["shards"] = "shard-00000.npy"
    (d / "manifest.json").write_text(json.dumps(m))
    d = copy("truncated")
    shard = sorted(d.glob("shard-*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:-64])
    (copy("no-labels") / "labels.npy").unlink()
    return out


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Every entry under ``root`` (names as bytes; links not followed): kind, mode, size and sha256 or target."""
    out: dict[bytes, tuple] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, base)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode)
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", st.st_mode, st.st_size, hashlib.sha256(fh.read()).hexdigest())
    return out
