"""Image sources shared by training, encoding, evaluation and codebook building: a folder (classes =
first-level sub-folders) or a file list, and how one image is read.

The order of images never depends on a directory listing: folders are walked recursively and the
files sorted by their relative POSIX path; class names are sorted; a file list is sorted the same
way. Labels are indices into the sorted class names, ``-1`` for an image without a class (a file
directly in the root folder, or a file-list line without a label).

Images are read with PIL and converted to RGB. A file that cannot be read is never fatal: the
dataset returns ``None`` with the reason; the caller skips it and records it (the feature store's or
the token directory's manifest).

``Preprocessing`` is the one image -> tensor rule of the package (training, ``encode``, ``evaluate``,
the codebook builder and the feature extractors all use it): the shorter side is resized to the
crop's shorter side (bicubic by default) with the longer side **truncated** (``int(S * long /
short)``, as torchvision's ``Resize`` does), then the center crop is taken with its offset
**rounded** (``round((h - H) / 2)``, torchvision's ``center_crop``), then ``(x / 255 - mean) / std``
(mean = std = 0.5: [-1, 1]). These are the rules ``vqgan-lc encode`` has always used, so token
directories written before stay valid; training used to round the longer side and floor the offset
(a 465 x 348 photo became 86 x 64 instead of 85 x 64 at 64 px) and now follows this rule too.
``to_uint8`` is the way back, ``[-1, 1]`` -> ``uint8`` pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

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

ResizeRule = Literal["shorter-side"]
CropRule = Literal["center"]
Interpolation = Literal["bicubic", "bilinear"]
RESIZE_RULES: tuple[str, ...] = ("shorter-side",)
CROP_RULES: tuple[str, ...] = ("center",)
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# ----------------------------------------------------------------------------------------- preprocessing
def resize_shorter_side(img: Image.Image, size: int, interpolation: Interpolation = "bicubic") -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio; the longer side is truncated
    (``int(size * long / short)``). An image whose shorter side already is ``size`` is returned as is."""
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, _RESAMPLE[interpolation])


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

    ``image_size`` is the output ``(H, W)`` (an int means square). The shorter side is resized to
    ``min(H, W)`` (``resize_to``) by ``resize_shorter_side``; the crop is centered (``center_crop_offset``);
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

    def __init__(
        self,
        image_size: int | Sequence[int],
        resize: ResizeRule = "shorter-side",
        interpolation: Interpolation = "bicubic",
        crop: CropRule = "center",
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
    ) -> None:
        size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            raise PreprocessingError(f"image size {image_size!r} must be a positive int or (height, width)")
        for value, allowed, what in ((resize, RESIZE_RULES, "resize rule"), (crop, CROP_RULES, "crop rule"),
                                     (interpolation, INTERPOLATIONS, "interpolation")):
            if value not in allowed:
                raise PreprocessingError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        m, sd = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(m) != 3 or len(sd) != 3 or min(sd) <= 0:
            raise PreprocessingError(f"mean {mean!r} and std {std!r} need 3 values each (std > 0)")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "mean", m)
        object.__setattr__(self, "std", sd)

    @property
    def resize_to(self) -> int:
        """The shorter side after resizing: the shorter side of ``image_size``."""
        return min(self.image_size)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """RGB conversion and the resize step alone (training takes its own random crops of it)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        return resize_shorter_side(img, self.resize_to, self.interpolation)

    def crop_image(self, img: Image.Image) -> Image.Image:
        """The crop step alone, on an image already resized by ``resize_image``."""
        h, w = self.image_size
        left, top = center_crop_offset(img.size[0], img.size[1], h, w)
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
        "std"}`` (``resize_to`` is derived, recorded for readers)."""
        return {"image_size": list(self.image_size), "resize": self.resize, "resize_to": self.resize_to,
                "interpolation": self.interpolation, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict`` (``resize_to`` is ignored: it follows from ``image_size``)."""
        try:
            return cls(d["image_size"], resize=d.get("resize", "shorter-side"),
                       interpolation=d.get("interpolation", "bicubic"), crop=d.get("crop", "center"),
                       mean=d.get("mean", HALF), std=d.get("std", HALF))
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
    for lineno, raw in enumerate(file_list.read_text().splitlines(), 1):
        line = raw.strip()
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
        rel = p.as_posix()
        if rel in entries:
            raise ImageSourceError(f"{file_list}:{lineno}: {rel} is listed twice")
        entries[rel] = label or None
    if not entries:
        raise ImageSourceError(f"file list {file_list} names no images")
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


def load_rgb(path: str | os.PathLike, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file fully and convert it to RGB (raises ``OSError``/``ValueError`` on a bad file).

    ``draft=(w, h)``: let a JPEG decoder decode at 1/2, 1/4 or 1/8 scale (DCT scaling in libjpeg),
    the smallest that is still at least ``w`` x ``h``; much faster when the target is far smaller than
    the file, but the pixels differ slightly from a full decode, so it is opt-in and callers record it.
    Other formats ignore it. An image that already is RGB is returned as decoded, without a copy.
    """
    with Image.open(path) as im:
        if draft is not None:
            im.draft("RGB", (max(1, int(draft[0])), max(1, int(draft[1]))))
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")


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
    "center_crop_offset",
    "collate",
    "draft_size",
    "list_images",
    "load_rgb",
    "resize_shorter_side",
    "to_uint8",
]
