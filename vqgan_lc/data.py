"""Image sources shared by training, encoding, evaluation and codebook building: a folder (classes =
first-level sub-folders) or a file list, and how one image is read.

The order of images never depends on a directory listing: folders are walked recursively and the
files sorted by their relative POSIX path; class names are sorted; a file list is sorted the same
way. Labels are indices into the sorted class names, ``-1`` for an image without a class (a file
directly in the root folder, or a file-list line without a label).

Images are read with PIL and converted to RGB. A file that cannot be read is never fatal: the
dataset returns ``None`` with the reason; the caller skips it and records it (the feature store's or
the token directory's manifest).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .errors import ImageSourceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
UNLABELLED = -1


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
    labels = tuple(names_to_idx[entries[p]] if entries[p] is not None else UNLABELLED for p in paths)
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
    """``(index, image tensor or None, error message or None)`` for each path of an ``ImageList``.

    ``transform`` maps a PIL RGB image to a ``(3, H, W)`` float tensor (an extractor's preprocessing).
    A file that cannot be decoded yields ``(index, None, reason)`` instead of raising. ``draft``: passed
    to ``load_rgb`` (reduced-scale JPEG decoding; ``None``, the default, decodes every pixel).
    """

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], torch.Tensor],
                 draft: tuple[int, int] | None = None) -> None:
        self.images = images
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.images.root / self.images.paths[i]
        try:
            img = load_rgb(path, self.draft)
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
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "Batch",
    "ImageDataset",
    "ImageList",
    "ImageSourceError",
    "collate",
    "draft_size",
    "list_images",
    "load_rgb",
]
