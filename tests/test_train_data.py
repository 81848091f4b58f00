"""ImageDataModule: official crops, determinism by (seed, epoch, index), rank shards, unreadable files skipped."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import (
    center_crops,
    data_module,
    single_thread,  # noqa: F401 - an autouse fixture: one intra-op thread
    write_photos,
    write_truncated_jpeg,
)

from vqgan_lc.data import ImageSourceError, Preprocessing, load_rgb
from vqgan_lc.train.data import (
    PAD,
    CollateImages,
    ImageFolderDataset,
    _ShardedSampler,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "flat")[0].parent


def test_val_batches_are_the_official_center_crops(photos: Path) -> None:
    dm = data_module(photos, val_batch_size=7)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape == (7, 3, 32, 32) and batch["failed"] == []
    assert torch.allclose(batch["images"], center_crops(photos, 32), atol=1e-6)
    assert batch["paths"] == sorted(p.name for p in photos.glob("*.jpg"))
    assert batch["labels"].tolist() == [-1] * 7  # images directly in the root: no class


def test_train_crops_depend_only_on_seed_epoch_and_index(photos: Path) -> None:
    dm = data_module(photos, image_size=48, batch_size=4, samples_per_epoch=8, flip=True)
    dm.setup("fit")

    def epoch(e: int, workers: int = 0) -> torch.Tensor:
        dm.num_workers = workers
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)
        return torch.cat([b["images"] for b in loader])

    e0 = epoch(0)
    assert e0.shape == (8, 3, 48, 48)
    assert float(e0.min()) >= -1.0 and float(e0.max()) <= 1.0
    assert torch.equal(e0, epoch(0))
    assert torch.equal(e0, epoch(0, workers=1))  # the same with a worker process
    assert not torch.equal(e0, epoch(1))
    dm2 = data_module(photos, image_size=48, batch_size=4, samples_per_epoch=8, flip=True, seed=1)
    dm2.setup("fit")
    loader = dm2.train_dataloader()
    loader.sampler.set_epoch(0)
    assert not torch.equal(e0, torch.cat([b["images"] for b in loader]))
    # a training item is an S x S window of the shortest-side resize (official SmallestMaxSize + RandomCrop)
    ds = ImageFolderDataset(dm.train_images, 48, train=True, seed=0)
    item = ds[(3, 5, 0)]["image"]
    pre = Preprocessing(48)
    resized = pre.to_tensor(pre.resize_image(load_rgb(photos / dm.train_images.paths[3])))
    h, w = resized.shape[1:]
    assert min(h, w) == 48
    windows = [(y, x) for y in range(h - 47) for x in range(w - 47)
               if torch.equal(resized[:, y : y + 48, x : x + 48], item)
               or torch.equal(resized[:, y : y + 48, x : x + 48].flip(-1), item)]
    assert len(windows) >= 1


def test_classes_from_subfolders_file_list_and_val_fraction(tmp_path: Path) -> None:
    write_photos(tmp_path / "data" / "cats", ("chelsea", "coffee"))
    write_photos(tmp_path / "data" / "space", ("hubble_deep_field", "rocket", "astronaut"))
    dm = data_module(tmp_path / "data", val_fraction=0.4, seed=3)
    dm.setup("fit")
    assert dm.train_images.classes == ("cats", "space")
    assert len(dm.train_images) == 3 and len(dm.val_images) == 2
    assert not set(dm.train_images.paths) & set(dm.val_images.paths)
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].tolist() == [dm.train_images.classes.index(p.split("/")[0]) for p in batch["paths"]]
    (tmp_path / "list.txt").write_text("space/rocket.jpg,space\ncats/coffee.jpg,cats\n")
    dm = data_module(tmp_path / "data", file_list=str(tmp_path / "list.txt"), val_data=str(tmp_path / "data"))
    dm.setup("fit")
    assert dm.train_images.paths == ("cats/coffee.jpg", "space/rocket.jpg") and len(dm.val_images) == 5


def test_shards_cover_the_validation_split_exactly_once() -> None:
    class Seven(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 7

    shards = [list(_ShardedSampler(Seven(), num_replicas=3, rank=r, train=False)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # equal lengths: every rank runs the same number of steps
    ids = [i for s in shards for i, _, _ in s]
    assert sorted(i for i in ids if i != PAD) == list(range(7)) and ids.count(PAD) == 2
    train = [_ShardedSampler(Seven(), num_replicas=2, rank=r, train=True, seed=0, samples_per_epoch=10) for r in (0, 1)]
    for s in train:
        s.set_epoch(4)
    keys = [list(s) for s in train]
    assert [len(k) for k in keys] == [5, 5] and all(e == 4 for k in keys for _, e, _ in k)
    assert [pos for _, _, pos in keys[0]] == [0, 1, 2, 3, 4]
    assert {i for k in keys for i, _, _ in k} == set(range(7))  # 10 samples: every image at least once


def test_unreadable_images_are_skipped_counted_and_logged(photos: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(photos, folder)
    write_truncated_jpeg(folder / "broken.jpg")
    (folder / "notes.png").write_text("not an image")
    dm = data_module(folder, val_batch_size=16, num_workers=1)  # failures cross the worker boundary
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape[0] == 7
    assert sorted(p for p, _ in batch["failed"]) == ["broken.jpg", "notes.png"]
    assert any("truncated" in r or "OSError" in r for p, r in batch["failed"] if p == "broken.jpg")
    with caplog.at_level(logging.WARNING, logger="vqgan_lc.train.data"):
        out = dm.on_before_batch_transfer(batch, 0)
        dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert out["failed"] == [] and out["images"].shape[0] == 7
    assert sorted(dm.skipped) == ["broken.jpg", "notes.png"] and dm.skip_events == 4
    assert sum("skipped unreadable image" in r.message for r in caplog.records) == 2  # once per file
    # a batch of only unreadable files collates to an empty batch, not an error
    empty = CollateImages(32)([{"failed": ("a.jpg", "OSError")}, None])
    assert empty["images"].shape == (0, 3, 32, 32) and empty["labels"].shape == (0,)


def test_too_few_images_for_a_batch_is_a_clear_error(photos: Path) -> None:
    dm = data_module(photos, batch_size=8, samples_per_epoch=None)
    dm.setup("fit")
    with pytest.raises(ImageSourceError, match="cannot fill one batch"):
        dm.train_dataloader()
    with pytest.raises(ImageSourceError, match="does not exist"):
        data_module(photos / "missing").setup("fit")
