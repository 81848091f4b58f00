"""Images for training: a folder (recursive, classes = first-level sub-folders) or a file list.

Transforms follow the official code: the shortest side is resized to ``S`` (by default bicubic with
PIL's antialiasing; ``resize="official"`` is albumentations' ``SmallestMaxSize`` of the official code,
OpenCV bilinear without antialias, and the exported model records it) and a random
``S x S`` crop is taken for training (optionally flipped; the official code never flips); validation
uses a center crop. Pixels map to [-1, 1]. The resize, the center crop and the pixel mapping are the
package's one rule, ``vqgan_lc.data.Preprocessing`` (the longer side truncated, the crop offset rounded),
so a validation image is exactly what ``vqgan-lc encode`` and ``evaluate`` feed the model.

Determinism: the order of an epoch and every crop/flip depend only on ``(seed, epoch, image
index)``, never on a global RNG, the number of workers or a resume. The data module also records
how far into the epoch training has consumed (each batch carries its sampler position) and saves
it in checkpoints, so a run resumed mid-epoch continues with exactly the batches an unbroken run
would have seen next. The samplers shard over ranks themselves (they subclass ``DistributedSampler``
so Lightning keeps them), validation without duplicates: every image is seen exactly once across
all ranks, so usage statistics summed over ranks equal one process's.

Unreadable images (truncated, corrupt, not an image) never stop training: the dataset returns a
marker, the collate function drops it and carries ``(path, reason)`` in the batch, and the data
module records it in the main process (``ImageDataModule.skipped``) and logs a warning once per file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._system import default_num_workers
from ..data import RESIZE_RULES, ImageSourceError, Preprocessing, ResizeRule
from ..errors import ConfigError
from ..sources import ImageSource, open_source

log = logging.getLogger(__name__)

DEFAULT_NUM_WORKERS = default_num_workers()
"""ImageDataModule's default worker count: min(4, CPU cores)."""

PAD = -1  # sampler index of a padding slot (validation shards of equal length)


class ImageFolderDataset(Dataset):
    """Items for the keys a ``_ShardedSampler`` yields: ``(index, epoch, position)`` or a plain index.

    Returns ``{"image": (3, S, S) in [-1, 1], "label": int, "path": str, "cursor": (epoch, position)}``,
    ``{"failed": (path, reason), "cursor": ...}`` for an unreadable file, or ``None`` for a padding slot.
    """

    def __init__(self, images: ImageSource, image_size: int, *, train: bool, flip: bool = False, seed: int = 0,
                 resize: ResizeRule = "shorter-side") -> None:
        self.images = images
        self.image_size = image_size
        self.preprocess = Preprocessing(image_size, resize=resize)
        self.train = train
        self.flip = flip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any] | None:
        idx, epoch, pos = key if isinstance(key, tuple) else (key, 0, -1)
        if idx == PAD:
            return None
        rel = self.images.paths[idx]
        try:
            img = self.images.load(idx)
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            msg = str(e).splitlines()[0] if str(e) else "unreadable image"
            return {"failed": (rel, f"{type(e).__name__}: {msg}"), "cursor": (epoch, pos)}
        pre = self.preprocess
        img = pre.resize_image(img)
        if self.train:
            s = self.image_size
            w, h = img.size
            rng = np.random.default_rng([self.seed, epoch, idx])
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            img = img.crop((x, y, x + s, y + s))
            if self.flip and bool(rng.random() < 0.5):
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = pre.crop_image(img)
        return {"image": pre.to_tensor(img), "label": self.images.labels[idx], "path": rel, "cursor": (epoch, pos)}


class CollateImages:
    """Stack the readable images of a batch; keep the failures for the main process to count.

    Returns ``{"images": (B, 3, S, S), "labels": (B,) int64, "paths": [str], "failed": [(path, reason)],
    "cursor": (epoch, next sampler position)}``; ``B`` may be 0 when every image of the batch was
    unreadable or padding.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        ok = [it for it in items if it is not None and "image" in it]
        failed = [it["failed"] for it in items if it is not None and "failed" in it]
        s = self.image_size
        images = torch.stack([it["image"] for it in ok]) if ok else torch.empty(0, 3, s, s)
        labels = torch.tensor([it["label"] for it in ok], dtype=torch.long)
        cursors = [it["cursor"] for it in items if it is not None and "cursor" in it]
        cursor = (cursors[-1][0], max(c[1] for c in cursors) + 1) if cursors else None
        return {"images": images, "labels": labels, "paths": [it["path"] for it in ok], "failed": failed,
                "cursor": cursor}


class _ShardedSampler(DistributedSampler):
    """Deterministic per-epoch order, sharded ``rank::num_replicas``; yields ``(index, epoch, position)``.

    ``train``: concatenated seeded permutations (``samples_per_epoch`` long, default one pass),
    padded by wrapping around to a multiple of ``num_replicas``. Otherwise: ``0..n-1`` in order,
    padded with ``PAD`` slots that the collate function drops, so no image is counted twice.

    ``epoch_fn`` (the trainer's current epoch) is read when iteration starts: Lightning creates the
    first iterator of a run before it calls ``set_epoch``, which would replay epoch 0's order after
    a resume. ``start_fn(epoch)`` gives the position to start from (a mid-epoch resume).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int,
        rank: int,
        train: bool,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        epoch_fn: Callable[[], int] | None = None,
        start_fn: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed, drop_last=False)
        self.n = len(dataset)  # type: ignore[arg-type]
        self.train = train
        self.samples = samples_per_epoch if (train and samples_per_epoch) else self.n
        self.per_rank = math.ceil(self.samples / num_replicas)
        self.epoch_fn = epoch_fn
        self.start_fn = start_fn

    def order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch`` (``PAD`` for padding slots)."""
        if not self.train:
            full = list(range(self.n)) + [PAD] * (self.per_rank * self.num_replicas - self.n)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            full = []
            while len(full) < self.samples:
                full += torch.randperm(self.n, generator=g).tolist()
            full = full[: self.samples]
            full += full[: self.per_rank * self.num_replicas - len(full)]
        return full[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        start = self.start_fn(epoch) if self.start_fn is not None else 0
        for pos, i in enumerate(self.order(epoch)[start:], start):
            yield (i, epoch, pos)

    def __len__(self) -> int:
        return self.per_rank


class ImageDataModule(pl.LightningDataModule):
    """Training and validation images for ``VQGANLCModule``.

    Args:
        data: image folder (recursive; classes from first-level sub-folders), or the root of the
            paths in ``file_list``; or ``wds:PATTERN`` (WebDataset tars) or ``hf:NAME_OR_DIR[:SPLIT]``
            (a Hugging Face dataset), see ``vqgan_lc.sources``.
        file_list: text file of ``relative/path[,label]`` lines (e.g. the official ImageNet split).
        val_data, val_file_list: the validation images. Without them, ``val_fraction`` of the training
            images are held out (seeded); with ``val_fraction=0`` the training images themselves are
            validated (center crops) -- fine for a demo, not for a benchmark.
        image_size: ``S``; training images get shortest side ``S`` and a random ``S x S`` crop.
        batch_size: per process (the official recipe: 8 per GPU x 32 GPUs).
        val_batch_size: default ``batch_size``.
        num_workers: DataLoader worker processes per rank.
        flip: random horizontal flips for training (off in the official code).
        seed: fixes the epoch order and every crop/flip.
        samples_per_epoch: training samples per epoch (default: one pass over the images); use it to
            make epochs of a tiny folder longer.
        drop_last: drop the last incomplete training batch (official).
        resize: ``shorter-side`` (PIL bicubic, vqgan-lc's rule) or ``official`` (albumentations
            ``SmallestMaxSize``: OpenCV bilinear, no antialias); ``VQGANLCModule`` records it in the
            exported model's preprocessing, so ``encode`` prepares images the same way.

    After ``setup``, ``train_images``/``val_images`` are the ``ImageSource``s; ``skipped`` maps each
    unreadable file (relative path) to the reason it was skipped, ``skip_events`` counts every skip.
    """

    def __init__(
        self,
        data: str,
        file_list: str | None = None,
        val_data: str | None = None,
        val_file_list: str | None = None,
        val_fraction: float = 0.0,
        image_size: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        flip: bool = False,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        drop_last: bool = True,
        resize: ResizeRule = "shorter-side",
    ) -> None:
        super().__init__()
        for name, value, least in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                   ("val_batch_size", val_batch_size, 1), ("num_workers", num_workers, 0),
                                   ("samples_per_epoch", samples_per_epoch, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"--data.{name} must be an integer >= {least}, got {value!r}; fix the value")
        if resize not in RESIZE_RULES:
            raise ConfigError(f"--data.resize must be one of {', '.join(RESIZE_RULES)}, got {resize!r}; fix the value")
        self.resize = resize
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"--data.val_fraction must be in [0, 1), got {val_fraction}; fix the value")
        self.data, self.file_list = data, file_list
        self.val_data, self.val_file_list = val_data, val_file_list
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.flip = flip
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.drop_last = drop_last
        self.train_images: ImageSource | None = None
        self.val_images: ImageSource | None = None
        self.skipped: dict[str, str] = {}
        self.skip_events = 0
        self._cursor: tuple[int, int] | None = None  # (epoch, next position) of the last consumed training batch
        self._resume_cursor: tuple[int, int] | None = None

    # ------------------------------------------------------------------ images
    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        images = open_source(self.data, self.file_list)
        if self.val_data is not None:
            self.train_images = images
            self.val_images = open_source(self.val_data, self.val_file_list)
        elif self.val_fraction > 0:
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(len(images) * self.val_fraction))
            if n_val >= len(images):
                raise ImageSourceError(f"val_fraction {self.val_fraction} leaves no training image of {len(images)}")
            self.val_images = _subset(images, sorted(perm[:n_val]))
            self.train_images = _subset(images, sorted(perm[n_val:]))
        else:
            self.train_images = self.val_images = images
            log.info("no validation split given: validating on the %d training images (center crops)", len(images))
        log.info("%d training images, %d validation images, %d classes", len(self.train_images),
                 len(self.val_images), len(self.train_images.classes))

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_images is not None
        world, rank = self._world()
        ds = ImageFolderDataset(self.train_images, self.image_size, train=True, flip=self.flip, seed=self.seed,
                                resize=self.resize)
        trainer = self.trainer
        sampler = _ShardedSampler(ds, num_replicas=world, rank=rank, train=True, seed=self.seed,
                                  samples_per_epoch=self.samples_per_epoch,
                                  epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
                                  start_fn=self._start_position)
        if self.drop_last and len(sampler) < self.batch_size:
            raise ImageSourceError(
                f"{len(sampler)} training samples per process cannot fill one batch of {self.batch_size}; "
                "lower --data.batch_size or raise --data.samples_per_epoch"
            )
        return _ResumableLoader(self, ds, sampler=sampler, drop_last=self.drop_last, **self._loader_kwargs(self.batch_size))

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        assert self.val_images is not None
        world, rank = self._world()
        ds = ImageFolderDataset(self.val_images, self.image_size, train=False, resize=self.resize)
        sampler = _ShardedSampler(ds, num_replicas=world, rank=rank, train=False)
        return DataLoader(ds, sampler=sampler, drop_last=False, **self._loader_kwargs(self.val_batch_size))

    def _loader_kwargs(self, batch_size: int) -> dict[str, Any]:
        return dict(
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=CollateImages(self.image_size),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    # ------------------------------------------------------------------ consumed batches, unreadable files
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Runs in the main process when the loop takes the batch (not when a worker prefetches it).
        if not isinstance(batch, dict):
            return batch
        trainer = self.trainer
        if batch.get("cursor") is not None and (trainer is None or trainer.training):
            self._cursor = tuple(batch["cursor"])
        if batch.get("failed"):
            self.record_failures(batch["failed"])
            batch = {**batch, "failed": []}
        return batch

    def _start_position(self, epoch: int) -> int:
        resume, self._resume_cursor = self._resume_cursor, None
        if resume is not None and resume[0] == epoch:
            log.info("resuming epoch %d at sample %d of this process's shard", epoch, resume[1])
            return resume[1]
        return 0

    def record_failures(self, failed: Sequence[tuple[str, str]]) -> None:
        """Count unreadable files (relative path, reason); warn once per file."""
        for path, reason in failed:
            self.skip_events += 1
            if path not in self.skipped:
                self.skipped[path] = reason
                log.warning("skipped unreadable image %s (%s)", path, reason)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "skip_events": self.skip_events}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = dict(state_dict.get("skipped", {}))
        self.skip_events = int(state_dict.get("skip_events", 0))


class _ResumableLoader(DataLoader):
    """The training DataLoader; its ``state_dict`` (saved by Lightning in checkpoints) is the position
    in the epoch that training has consumed, so a mid-epoch resume continues with the next batch."""

    def __init__(self, owner: ImageDataModule, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def state_dict(self) -> dict[str, Any]:
        cursor = self._owner._cursor
        return {"cursor": list(cursor) if cursor is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        cursor = state_dict.get("cursor")
        self._owner._resume_cursor = (int(cursor[0]), int(cursor[1])) if cursor is not None else None


def _subset(images: ImageSource, idx: Sequence[int]) -> ImageSource:
    return images.subset(idx)

