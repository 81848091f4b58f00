"""Image sources shared by training, encoding, evaluation and codebook building: a folder (classes =
first-level sub-folders) or a file list, and how one image is read.

The order of images never depends on a directory listing: folders are walked recursively and the
files sorted by their relative POSIX path; class names are sorted; a file list is sorted the same
way. Labels are indices into the sorted class names, ``-1`` for an image without a class (a file
directly in the root folder, or a file-list line without a label).

Images are read with PIL by ``load_rgb``, the one reader of every path (``to_rgb`` is its conversion
step, also applied to PIL images handed to ``preprocess``): the EXIF orientation is applied (a portrait
phone photo is upright, ``ImageOps.exif_transpose``); 16-bit and 32-bit images (PIL modes ``I;16``, ``I``,
``F``) are scaled to 8 bits instead of clipped (``I;16``: ``round(x / 257)``; ``I`` and ``F``: from the
smallest of ``[0, 1]`` (``F`` only), ``[0, 255]``, ``[0, 65535]``, ``[0, 2**31 - 1]`` that holds the
image's maximum; negative values and NaN become 0); an alpha channel is composited on a **white**
background (transparent areas come out white, as a browser shows such a PNG on a white page), then the
image is converted to RGB. Both conventions are recorded as ``orientation: "exif"`` and ``alpha:
"white"`` in every preprocessing record (``IMAGE_READING``). A file that cannot be read is never fatal:
the dataset returns ``None`` with the reason; the caller skips it and records it (the feature store's
or the token directory's manifest).

File names are stored one per line (``paths.txt``, ``sources.tsv``), so ``list_images`` refuses, before
any work, a name holding a line break of any kind (``\\n``, ``\\r``, form feed, U+2028, ...) or bytes that
are not UTF-8 (``check_image_names``).

``Preprocessing`` is the one image -> tensor rule of the package (training, ``encode``, ``evaluate``,
the codebook builder and the feature extractors all use it): the shorter side is resized to the
crop's shorter side (bicubic by default) with the longer side **truncated** (``int(S * long /
short)``, as torchvision's ``Resize`` does), then the center crop is taken with its offset
**rounded** (``round((h - H) / 2)``, torchvision's ``center_crop``), then ``(x / 255 - mean) / std``
(mean = std = 0.5: [-1, 1]). These are the rules ``vqgan-lc encode`` has always used, so token
directories written before stay valid; training used to round the longer side and floor the offset
(a 465 x 348 photo became 86 x 64 instead of 85 x 64 at 64 px) and now follows this rule too.
``to_uint8`` is the way back, ``[-1, 1]`` -> ``uint8`` pixels.

``resize="official"`` is the official VQGAN-LC rule instead (albumentations ``SmallestMaxSize`` then
``CenterCrop``, ``training_vqgan.py`` / ``eval_reconstruction.py``): OpenCV ``INTER_LINEAR`` without
antialiasing, both sides ``round(side * S / short)``, the crop offset floored (``(h - H) // 2``). It
needs OpenCV (``pip install "vqgan-lc[eval]"``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ImageSourceError, PreprocessingError

if TYPE_CHECKING:
    from .sources import ImageSource

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
UNLABELLED = -1

RGB = tuple[float, float, float]
HALF: RGB = (0.5, 0.5, 0.5)
"""mean = std = 0.5: pixels in [-1, 1] (the tokenizers' input range)."""
OPENAI_CLIP_MEAN: RGB = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: RGB = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)

ResizeRule = Literal["shorter-side", "official"]
CropRule = Literal["center"]
Interpolation = Literal["bicubic", "bilinear"]
RESIZE_RULES: tuple[str, ...] = ("shorter-side", "official")
CROP_RULES: tuple[str, ...] = ("center",)
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
Orientation = Literal["exif"]
AlphaBackground = Literal["white"]
ORIENTATIONS: tuple[str, ...] = ("exif",)
ALPHA_BACKGROUNDS: tuple[str, ...] = ("white",)
IMAGE_READING: dict[str, str] = {"orientation": "exif", "alpha": "white"}
"""How ``load_rgb`` reads a file, as every preprocessing record states it: EXIF orientation applied, alpha
composited on white. A record without these fields was written before they existed (orientation ignored,
alpha dropped), so it differs from a new one and a resumed run refuses to mix the two."""


# ----------------------------------------------------------------------------------------- preprocessing
def resize_shorter_side(img: Image.Image, size: int, interpolation: Interpolation = "bicubic") -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio; the longer side is truncated
    (``int(size * long / short)``). An image whose shorter side already is ``size`` is returned as is."""
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, _RESAMPLE[interpolation])


def resize_smallest_max_size(img: Image.Image, size: int) -> Image.Image:
    """The official VQGAN-LC resize (albumentations ``SmallestMaxSize(size)``): scale so the shorter side
    is ``size``, both sides rounded (``round(side * size / short)``), OpenCV ``INTER_LINEAR`` without
    antialiasing (a downscale samples 2x2 neighbours only). An image already at ``size`` is returned as is."""
    w, h = img.size
    scale = size / min(w, h)
    if scale == 1.0:
        return img
    from ._deps import require

    cv2 = require("cv2", "eval", "the official resize (OpenCV bilinear)")
    new_w, new_h = round(w * scale), round(h * scale)
    out = cv2.resize(np.asarray(img.convert("RGB")), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(out)


def center_crop_offset(width: int, height: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """``(left, top)`` of the centered ``crop_h x crop_w`` window in a ``width x height`` image (rounded)."""
    if crop_h > height or crop_w > width:
        raise PreprocessingError(
            f"cannot center-crop {crop_h}x{crop_w} from a {height}x{width} image; resize the shorter side to at "
            "least the crop size first"
        )
    return int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))


@dataclass(frozen=True, init=False)
class Preprocessing:
    """PIL image -> ``(3, H, W)`` float32 tensor: resize the shorter side, crop, normalise.

    ``orientation`` and ``alpha`` record how the image was read (``to_rgb``: the EXIF orientation applied,
    alpha composited on white; the only values); ``resize_image`` applies them to an image not yet RGB.
    ``image_size`` is the output ``(H, W)`` (an int means square). The shorter side is resized to
    ``min(H, W)`` (``resize_to``) by ``resize_shorter_side``; the crop is centered (``center_crop_offset``);
    ``resize="official"`` uses ``resize_smallest_max_size`` and a floored crop offset instead (the
    official VQGAN-LC albumentations rule; ``interpolation`` is then ``bilinear``, the default for it);
    pixels become ``(x / 255 - mean) / std`` per channel (the default ``HALF`` gives [-1, 1]).
    Frozen and picklable (it runs in DataLoader workers); ``to_dict``/``from_dict`` round-trip it
    through JSON, so a file can record exactly how its images were prepared.
    """

    image_size: tuple[int, int]
    resize: ResizeRule = "shorter-side"
    interpolation: Interpolation = "bicubic"
    crop: CropRule = "center"
    mean: RGB = HALF
    std: RGB = HALF
    orientation: Orientation = "exif"
    alpha: AlphaBackground = "white"

    def __init__(
        self,
        image_size: int | Sequence[int],
        resize: ResizeRule = "shorter-side",
        interpolation: Interpolation | None = None,
        crop: CropRule = "center",
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
        orientation: Orientation = "exif",
        alpha: AlphaBackground = "white",
    ) -> None:
        size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            raise PreprocessingError(f"image size {image_size!r} must be a positive int or (height, width)")
        for value, allowed, what in ((resize, RESIZE_RULES, "resize rule"), (crop, CROP_RULES, "crop rule"),
                                     (interpolation, INTERPOLATIONS, "interpolation"),
                                     (orientation, ORIENTATIONS, "orientation rule"),
                                     (alpha, ALPHA_BACKGROUNDS, "alpha background")):
            if value is not None and value not in allowed:
                raise PreprocessingError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if interpolation is None:
            interpolation = "bilinear" if resize == "official" else "bicubic"
        elif resize == "official" and interpolation != "bilinear":
            raise PreprocessingError(f"the official resize is OpenCV bilinear, not {interpolation!r}; leave "
                                     "interpolation out or set it to 'bilinear'")
        m, sd = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(m) != 3 or len(sd) != 3 or min(sd) <= 0:
            raise PreprocessingError(f"mean {mean!r} and std {std!r} need 3 values each (std > 0)")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "mean", m)
        object.__setattr__(self, "std", sd)
        object.__setattr__(self, "orientation", orientation)
        object.__setattr__(self, "alpha", alpha)

    @property
    def resize_to(self) -> int:
        """The shorter side after resizing: the shorter side of ``image_size``."""
        return min(self.image_size)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """RGB conversion (``to_rgb``) and the resize step alone (training takes its own random crops of it)."""
        img = to_rgb(img)
        if self.resize == "official":
            return resize_smallest_max_size(img, self.resize_to)
        return resize_shorter_side(img, self.resize_to, self.interpolation)

    def crop_image(self, img: Image.Image) -> Image.Image:
        """The crop step alone, on an image already resized by ``resize_image``."""
        h, w = self.image_size
        left, top = center_crop_offset(img.size[0], img.size[1], h, w)
        if self.resize == "official":  # albumentations CenterCrop floors the offset
            left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        return img.crop((left, top, left + w, top + h))

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """The normalisation step alone: RGB ``uint8`` -> ``(3, h, w)`` float32 ``(x / 255 - mean) / std``."""
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.crop_image(self.resize_image(img)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"image_size": [H, W], "resize", "resize_to", "interpolation", "crop", "mean",
        "std", "orientation", "alpha"}`` (``resize_to`` is derived, recorded for readers)."""
        return {"image_size": list(self.image_size), "resize": self.resize, "resize_to": self.resize_to,
                "interpolation": self.interpolation, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "orientation": self.orientation, "alpha": self.alpha}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict`` (``resize_to`` is ignored: it follows from ``image_size``; a record older
        than ``orientation``/``alpha`` opens with today's reading rules)."""
        try:
            return cls(d["image_size"], resize=d.get("resize", "shorter-side"),
                       interpolation=d.get("interpolation"), crop=d.get("crop", "center"),
                       mean=d.get("mean", HALF), std=d.get("std", HALF),
                       orientation=d.get("orientation", "exif"), alpha=d.get("alpha", "white"))
        except (KeyError, TypeError, ValueError) as e:
            raise PreprocessingError(f"invalid preprocessing record {dict(d)!r} ({e}); it needs an image_size") from e


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float images -> ``uint8`` ``[0, 255]`` (clamped, rounded), what a saved PNG holds."""
    return images.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)


@dataclass(frozen=True)
class ImageList:
    """An ordered list of images under ``root``.

    Attributes:
        root: folder the relative ``paths`` are resolved against.
        paths: relative POSIX paths, sorted.
        labels: one class index per path (into ``classes``), ``-1`` when the image has no class.
        classes: sorted class names.
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.paths)

    def source_hash(self) -> str:
        """sha256 of the ordered ``path<TAB>class name`` lines: what a feature store and a codebook record."""
        h = hashlib.sha256()
        for p, lab in zip(self.paths, self.labels):
            h.update(f"{p}\t{self.classes[lab] if lab >= 0 else ''}\n".encode())
        return h.hexdigest()

    # The ``vqgan_lc.sources.ImageSource`` interface (tars and datasets have the same methods).
    @property
    def kind(self) -> Literal["folder"]:
        return "folder"

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        """Image ``i`` as RGB (``load_rgb``; raises on an unreadable file)."""
        return load_rgb(self.root / self.paths[i], draft)

    def location(self, i: int) -> str:
        return str(self.root / self.paths[i])

    def record(self, i: int) -> dict[str, Any]:
        """What changes when file ``i`` may have changed: ``{"size", "mtime_ns"}``."""
        st = os.stat(self.root / self.paths[i])
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def subset(self, indices: Sequence[int]) -> ImageList:
        return ImageList(root=self.root, paths=tuple(self.paths[i] for i in indices),
                         labels=tuple(self.labels[i] for i in indices), classes=self.classes)

    def describe_source(self) -> dict[str, Any]:
        return {"kind": "folder"}


def list_images(root: str | os.PathLike, file_list: str | os.PathLike | None = None) -> ImageList:
    """List the images under ``root``, or those named by ``file_list`` (paths relative to ``root``).

    Folder mode: recursive; classes are the sorted names of the first-level sub-folders that contain
    at least one image; an image directly in ``root`` gets label ``-1``. Extensions (case-insensitive):
    ``IMAGE_EXTENSIONS``. Symlinked folders are followed once.

    File-list mode: a text file with one ``relative/path[,label]`` per line (blank lines and lines
    starting with ``#`` are ignored). Labels are class names; when every label is an integer they are
    sorted numerically, else as strings. Entries are sorted by path; a path listed twice is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageSourceError(f"image folder {root} does not exist or is not a folder; check --data")
    if file_list is not None:
        return _from_file_list(root, Path(file_list))
    return _from_folder(root)


def _from_folder(root: Path) -> ImageList:
    found: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((rel_dir / name).as_posix())
    if not found:
        raise ImageSourceError(
            f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {root}; check --data"
        )
    check_image_names(root, found)
    found.sort()
    top = {p.split("/", 1)[0] for p in found if "/" in p}
    classes = tuple(sorted(top))
    index = {c: i for i, c in enumerate(classes)}
    labels = tuple(index[p.split("/", 1)[0]] if "/" in p else UNLABELLED for p in found)
    return ImageList(root=root, paths=tuple(found), labels=labels, classes=classes)


def _from_file_list(root: Path, file_list: Path) -> ImageList:
    if not file_list.is_file():
        raise ImageSourceError(f"file list {file_list} does not exist; check --file-list")
    entries: dict[str, str | None] = {}
    try:
        text = file_list.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ImageSourceError(f"file list {file_list} is not UTF-8 text ({e.reason} at byte {e.start}); "
                               "save it as UTF-8") from None
    # split("\n") only: splitlines() would also cut a name at \r, form feed or U+2028, which
    # check_image_names then refuses with the name in full.
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        path, sep, label = line.rpartition(",")
        if not sep or label.strip().lower().endswith(IMAGE_EXTENSIONS):  # no label (a comma in a file name)
            path, label = line, ""
        path, label = path.strip(), label.strip()
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(root)
            except ValueError:
                raise ImageSourceError(
                    f"{file_list}:{lineno}: {path} is not under the image folder {root}; "
                    "list paths relative to --data"
                ) from None
        rel = posixpath.normpath(p.as_posix())
        if rel == ".." or rel.startswith("../"):
            raise ImageSourceError(
                f"{file_list}:{lineno}: {path} leads out of the image folder {root} ('..'); "
                "list paths relative to --data that stay inside it"
            )
        if rel in entries:
            raise ImageSourceError(f"{file_list}:{lineno}: {rel} is listed twice")
        entries[rel] = label or None
    if not entries:
        raise ImageSourceError(f"file list {file_list} names no images")
    check_image_names(root, entries)
    names = {lab for lab in entries.values() if lab is not None}
    try:
        classes = tuple(str(c) for c in sorted({int(n) for n in names}))
        names_to_idx = {n: classes.index(str(int(n))) for n in names}
    except ValueError:
        classes = tuple(sorted(names))
        names_to_idx = {n: classes.index(n) for n in names}
    paths = tuple(sorted(entries))
    labels = tuple(UNLABELLED if (name := entries[p]) is None else names_to_idx[name] for p in paths)
    return ImageList(root=root, paths=paths, labels=labels, classes=classes)


# Every character str.splitlines() splits on: a name holding one cannot be stored one per line.
_LINE_BREAKS = {"\n": "a newline", "\r": "a carriage return", "\v": "a vertical tab", "\f": "a form feed",
                "\x1c": "a file separator", "\x1d": "a group separator", "\x1e": "a record separator",
                "\x85": "a next-line character (U+0085)", "\u2028": "a line separator (U+2028)",
                "\u2029": "a paragraph separator (U+2029)"}


_UNSTORABLE = re.compile("[" + "".join(_LINE_BREAKS) + "\ud800-\udfff]")  # breaks, or surrogate-escaped bytes


def image_name_problem(name: str) -> str | None:
    """Why the file name ``name`` cannot be listed (a line break of any kind, or bytes that are not UTF-8
    and came through as surrogate escapes), or ``None`` when it is fine."""
    hit = _UNSTORABLE.search(name)
    if hit is None:
        return None
    if hit.group() in _LINE_BREAKS:
        return f"contains {_LINE_BREAKS[hit.group()]}"
    return "is not valid UTF-8 (a name from another encoding, e.g. an old zip archive)"


def check_image_names(root: str | os.PathLike, names: Iterable[str]) -> None:
    """Refuse, before any work, image names that cannot be stored one per line (``image_name_problem``):
    ``ImageSourceError`` naming the first such file and how many there are."""
    bad = [(n, why) for n in names if (why := image_name_problem(n)) is not None]
    if bad:
        name, why = bad[0]
        more = f" (and {len(bad) - 1} more such names)" if len(bad) > 1 else ""
        raise ImageSourceError(
            f"image file name {os.path.join(os.fspath(root), name)!r} {why}{more}; rename it, since vqgan-lc "
            "stores file names one per line in UTF-8"
        )


_HIGH_BIT_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """A 16/32-bit gray image scaled to ``L`` (see the module docstring for the ranges)."""
    x = np.asarray(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray(((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), "L")
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(x.max()) if x.size else 0.0
    ranges = (1.0, 255.0, 65535.0, 2.0**31 - 1) if img.mode == "F" else (255.0, 65535.0, 2.0**31 - 1)
    full = next((r for r in ranges if top <= r), top)
    return Image.fromarray(np.clip(np.rint(x * (255.0 / full)), 0, 255).astype(np.uint8), "L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """RGB of ``img`` (any mode with alpha) over white: ``round((c * a + 255 * (255 - a)) / 255)``."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    a = rgba[..., 3:]
    out = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as RGB, read the way every path of vqgan-lc reads images (``IMAGE_READING``).

    The EXIF orientation is applied (``ImageOps.exif_transpose``); 16-bit and 32-bit images (``I;16``, ``I``,
    ``F``) are scaled to 8 bits, not clipped; an alpha channel (or a palette's transparency) is composited
    on white. An image that already is RGB and upright is returned as is, without a copy.
    """
    try:
        orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation tag
    except Exception:  # noqa: BLE001 - a damaged EXIF block is not worth losing the image over
        orientation = 1
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_DEPTH:
        img = _to_8bit_gray(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        return _composite_on_white(img)
    return img if img.mode == "RGB" else img.convert("RGB")


_OPEN_LOCK = threading.Lock()


def _open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` with PIL's DecompressionBombWarning, which does not say which file, silenced: the caller
    warns with the name instead. The lock keeps threads of this loader from restoring each other's filters."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        return Image.open(path)


def load_rgb(path: str | os.PathLike, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file fully and convert it to RGB by ``to_rgb`` (raises ``OSError``/``ValueError`` on a
    bad file): EXIF orientation applied, 16/32-bit scaled to 8 bits, alpha composited on white.

    ``draft=(w, h)``: let a JPEG decoder decode at 1/2, 1/4 or 1/8 scale (DCT scaling in libjpeg),
    the smallest that is still at least ``w`` x ``h``; much faster when the target is far smaller than
    the file, but the pixels differ slightly from a full decode, so it is opt-in and callers record it.
    Other formats ignore it. An image that already is RGB is returned as decoded, without a copy.
    An image larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (but under twice that, where PIL refuses it)
    gives a ``DecompressionBombWarning`` naming the file.
    """
    with _open_image(path) as im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.size[0] * im.size[1] > limit:
            warnings.warn(f"{os.fspath(path)}: {im.size[0]}x{im.size[1]} pixels exceeds PIL's limit of {limit} "
                          "pixels (a possible decompression bomb); decoding it anyway",
                          Image.DecompressionBombWarning, stacklevel=2)
        if draft is not None:
            im.draft("RGB", (max(1, int(draft[0])), max(1, int(draft[1]))))
        im.load()
        return to_rgb(im)


def draft_size(image_size: int) -> tuple[int, int]:
    """The ``load_rgb`` draft request for a short side of ``image_size``: twice the target, as Pillow's
    ``thumbnail`` does (``reducing_gap=2``), so the bicubic resize still has 2x the pixels to average."""
    return (2 * image_size, 2 * image_size)


class ImageDataset(torch.utils.data.Dataset):
    """``(index, image tensor or None, error message or None)`` for each item of an ``ImageSource``
    (an ``ImageList``, WebDataset tars or a HF dataset: ``vqgan_lc.sources``).

    ``transform`` maps a PIL RGB image to a ``(3, H, W)`` float tensor (an extractor's preprocessing).
    A file that cannot be decoded yields ``(index, None, reason)`` instead of raising. ``draft``: passed
    to ``load_rgb`` (reduced-scale JPEG decoding; ``None``, the default, decodes every pixel).
    """

    def __init__(self, images: ImageSource, transform: Callable[[Image.Image], Any],
                 draft: tuple[int, int] | None = None) -> None:
        self.images = images
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = self.images.load(i, self.draft)
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            return i, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable image'}"
        return i, self.transform(img), None


@dataclass
class Batch:
    """A collated batch: ``images`` (B, 3, H, W) of the readable files, their source ``indices``, and failures."""

    indices: list[int]
    images: torch.Tensor | None
    failed: list[tuple[int, str]]


def collate(items: Sequence[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    """Stack the readable images of a batch; keep ``(index, reason)`` for the others."""
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, str(err)) for i, x, err in items if x is None]
    # default_collate stacks; in a DataLoader worker it stacks straight into shared memory, so sending
    # the batch to the main process does not copy it once more.
    images = torch.utils.data.default_collate([x for _, x in ok]) if ok else None
    return Batch(indices=[i for i, _ in ok], images=images, failed=failed)


__all__ = [
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "UNLABELLED",
    "Batch",
    "CropRule",
    "ImageDataset",
    "ImageList",
    "ImageSourceError",
    "Interpolation",
    "Preprocessing",
    "PreprocessingError",
    "ResizeRule",
    "ALPHA_BACKGROUNDS",
    "IMAGE_READING",
    "ORIENTATIONS",
    "AlphaBackground",
    "Orientation",
    "center_crop_offset",
    "check_image_names",
    "collate",
    "draft_size",
    "image_name_problem",
    "list_images",
    "load_rgb",
    "resize_shorter_side",
    "to_rgb",
    "to_uint8",
]
