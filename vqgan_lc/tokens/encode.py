"""The dataset pipeline: an image folder -> a token directory, resumable, sharded, multi-device.

Shard ``i`` holds the readable images of the sorted sources ``[i * shard_size, (i + 1) * shard_size)``,
so the result never depends on workers, devices or on where a previous run stopped. A shard is
finished when its ``.npy`` and its ``.json`` record exist and the sha256 matches; a rerun skips
finished shards, redoes the rest and writes the manifest last.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .._io import TMP_GLOB, atomic_write_json
from ..data import (
    IMAGE_READING,
    Batch,
    ImageDataset,
    ImageList,
    Preprocessing,
    collate,
    draft_size,
    list_images,
)
from ..errors import EncodeError
from ..progress import Progress
from ..tokenizer import Tokenizer, load_tokenizer, tokenizer_identity
from .format import (
    MANIFEST,
    RUN_FILE,
    TOKEN_DTYPE,
    TOKENS_FORMAT,
    TOKENS_FORMAT_VERSION,
    TokenFormatError,
    clear_tokens,
    shard_done,
    shard_ranges,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)

WORKER_MODEL_DIR = ".model-for-workers"



@dataclass(frozen=True)
class EncodeOptions:
    """How images become tokens. ``image_size``: short side resized (bicubic) then center-cropped.

    ``jpeg_draft``: decode JPEGs at a reduced scale (1/2, 1/4 or 1/8, never below twice ``image_size``
    on the short side) before the bicubic resize; several times faster when the files are much larger
    than ``image_size``, but the pixels, hence a few ids, differ from a full decode, so it is off by
    default and recorded in the manifest's ``preprocessing`` (a rerun with the other setting refuses).

    ``cpu_parallel_batches`` (CPU device only; 0 = off): that many batches at once, each decoded and
    encoded by its own thread with ``torch.get_num_threads() // cpu_parallel_batches`` intra-op threads,
    instead of ``num_workers`` decoding processes (then unused) feeding the model on all intra-op threads.
    On a CPU-only machine this avoids the decoding processes stalling the model's threads, and fewer
    threads per batch use the cores better; memory holds that many batches' activations. torch's
    intra-op thread count is lowered process-wide during the call, then restored. The ids are those of
    the model run with that thread count: the same as the default path for the tiny preset, but a
    convolution's float rounding can depend on the thread count (as between machines), which flipped
    1 of 2,048 ids of the f16 architecture at 256 px between 1 and 2 threads; not recorded in the
    manifest, like ``devices``, which lowers the thread count the same way.
    """

    image_size: int = 256
    batch_size: int = 32
    num_workers: int = 2
    shard_size: int = 4096
    on_error: Literal["skip", "fail"] = "skip"
    devices: int = 1
    jpeg_draft: bool = False
    cpu_parallel_batches: int = 0

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if min(self.image_size, self.batch_size, self.shard_size, self.devices) < 1 or self.num_workers < 0:
            raise ValueError("image_size, batch_size, shard_size and devices must be positive")
        if self.cpu_parallel_batches < 0:
            raise ValueError("cpu_parallel_batches must be >= 0 (0: decoding processes feed the model)")


def _run_descriptor(model: Tokenizer, images: ImageList, opts: EncodeOptions) -> dict[str, Any]:
    h, w = model.latent_shape(opts.image_size, opts.image_size)
    preprocessing: dict[str, Any] = {"image_size": opts.image_size, "resize": "short-side-bicubic", "crop": "center",
                                     "range": "[-1, 1]", **IMAGE_READING}
    if opts.jpeg_draft:  # only when on, so directories written before the option existed still match
        preprocessing["jpeg_draft"] = {"min_short_side": draft_size(opts.image_size)[0]}
    return {
        "format": TOKENS_FORMAT,
        "format_version": TOKENS_FORMAT_VERSION,
        "tokenizer": tokenizer_identity(model),
        "grid": [h, w],
        "dtype": TOKEN_DTYPE.name,
        "num_sources": len(images),
        "source_hash": images.source_hash(),
        "classes": list(images.classes),
        "shard_size": opts.shard_size,
        # Only what changes the ids: batch size, workers and devices do not.
        "preprocessing": preprocessing,
    }


def _prepare_output(out: Path, descriptor: dict[str, Any], overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / RUN_FILE
    if run_path.is_file():
        try:
            previous = json.loads(run_path.read_text())
        except ValueError:
            previous = None
        if previous != descriptor:
            if not overwrite:
                diff = sorted(k for k in descriptor if previous is None or previous.get(k) != descriptor[k])
                raise TokenFormatError(
                    f"{out} holds tokens made with another model, source list or options (differs in: "
                    f"{', '.join(diff)}); choose another --out or pass --overwrite to replace them"
                )
            clear_tokens(out)
    elif any(out.glob("shard-*.npy")) or (out / MANIFEST).exists():
        if not overwrite:
            raise TokenFormatError(f"{out} has token files from an unknown run; pass --overwrite to replace them")
        clear_tokens(out)
    # Leftovers of a killed run: temporary files and the worker model copy are never part of the result.
    for p in out.glob(TMP_GLOB):
        p.unlink()
    shutil.rmtree(out / WORKER_MODEL_DIR, ignore_errors=True)
    atomic_write_json(run_path, descriptor)




def _encode_shards(
    model: Tokenizer,
    images: ImageList,
    out: Path,
    shards: list[tuple[int, int, int]],
    opts: EncodeOptions,
    device: torch.device,
    progress: bool,
) -> None:
    """Encode the listed ``(index, start, stop)`` shards and write each as soon as it is complete."""
    if not shards:
        return
    model = model.to(device).eval()  # type: ignore[attr-defined]
    h, w = model.latent_shape(opts.image_size, opts.image_size)
    order = [i for _, s, e in shards for i in range(s, e)]
    draft = draft_size(opts.image_size) if opts.jpeg_draft else None
    dataset = ImageDataset(images, Preprocessing(opts.image_size), draft=draft)
    lanes = opts.cpu_parallel_batches if device.type == "cpu" else 0
    if opts.cpu_parallel_batches and not lanes:
        log.info("cpu_parallel_batches applies to a CPU device only; %s uses decoding processes", device)

    def encode(x: torch.Tensor) -> np.ndarray:
        return model.encode(x.to(device, non_blocking=True)).to("cpu", torch.int64).numpy().astype(TOKEN_DTYPE)

    by_source: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    pending = list(shards)
    bar = Progress(len(order), f"encode -> {out.name}", enabled=progress)
    batches = (_parallel_batches(dataset, order, opts, encode, lanes) if lanes
               else _loader_batches(dataset, order, opts, encode, device))
    try:
        for batch, ids in batches:
            for i, reason in batch.failed:
                if opts.on_error == "fail":
                    raise EncodeError(
                        f"cannot read {images.root / images.paths[i]} ({reason}); finished shards are kept, "
                        "fix or remove the file and rerun, or pass --on-error skip"
                    )
                log.warning("skipped %s: %s", images.paths[i], reason)
                failed[i] = reason
            if ids is not None:
                for i, row in zip(batch.indices, ids):
                    by_source[i] = row
            bar.update(len(batch.indices) + len(batch.failed))
            while pending and all(j in by_source or j in failed for j in range(pending[0][1], pending[0][2])):
                index, s, e = pending.pop(0)
                write_shard(out, images, index, s, e, by_source, failed, (h, w))
    finally:
        batches.close()  # stops the decoding processes or threads
        bar.close()


Encoded = tuple[Batch, "np.ndarray | None"]


def _loader_batches(dataset: ImageDataset, order: list[int], opts: EncodeOptions,
                    encode: Callable[[torch.Tensor], np.ndarray], device: torch.device) -> Generator[Encoded, None, None]:
    """``num_workers`` DataLoader processes decode; this thread runs the model (all intra-op threads)."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order), batch_size=opts.batch_size, num_workers=opts.num_workers,
        collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if opts.num_workers > 0 else None,
    )
    for batch in loader:
        ids = None
        if batch.images is not None:
            with torch.inference_mode():
                ids = encode(batch.images)
        yield batch, ids


def _parallel_batches(dataset: ImageDataset, order: list[int], opts: EncodeOptions,
                      encode: Callable[[torch.Tensor], np.ndarray], lanes: int) -> Generator[Encoded, None, None]:
    """``lanes`` threads, each decoding one whole batch and running the model on it with its share of the
    intra-op threads (PIL and torch release the GIL); batches come back in order. At most ``2 * lanes``
    batches are in flight, so a thread never waits for this one to take a result."""
    from concurrent.futures import ThreadPoolExecutor

    def run(start: int) -> Encoded:
        batch = collate([dataset[i] for i in order[start : start + opts.batch_size]])
        if batch.images is None or (batch.failed and opts.on_error == "fail"):
            return batch, None
        with torch.inference_mode():
            return batch, encode(batch.images)

    starts = iter(range(0, len(order), opts.batch_size))
    previous = torch.get_num_threads()
    # Process-wide; the new threads take it up on their first parallel region.
    torch.set_num_threads(max(1, previous // lanes))
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="vqgan-lc-encode")
    try:
        inflight = deque(pool.submit(run, s) for s in itertools.islice(starts, 2 * lanes))
        while inflight:
            result = inflight.popleft().result()
            if (s := next(starts, None)) is not None:
                inflight.append(pool.submit(run, s))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous)


def exit_with_parent() -> None:
    """Make this (spawned) process exit when its parent dies, as after an OOM kill of the parent: Linux's
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere, or if that fails, a daemon thread polling the parent pid.
    (torch's spawn asks for SIGINT instead, which a process started with SIGINT ignored, as a background job
    of a non-interactive shell or under nohup is, never acts on: the workers then ran to the end.)"""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, name="vqgan-lc-parent-watch", daemon=True).start()


def _worker(rank: int, model_dir: str, images: ImageList, out: str, shards: list, opts: EncodeOptions,
            threads: int) -> None:
    exit_with_parent()  # orphans would keep a GPU busy and write into a directory a rerun now owns
    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    model = load_tokenizer(model_dir)
    mine = [s for k, s in enumerate(shards) if k % opts.devices == rank]
    _encode_shards(model, images, Path(out), mine, opts, device, progress=rank == 0)


def encode_dataset(
    model: Tokenizer | str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    file_list: str | os.PathLike | None = None,
    options: EncodeOptions | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every image under ``data`` (or named by ``file_list``) into the token directory ``out``.

    Returns the manifest. Resumable: rerunning the same call after a crash redoes only unfinished
    shards and the directory ends byte-identical to an uninterrupted run. ``options.devices > 1``
    starts one process per device (CUDA GPUs, else CPU processes sharing the cores); each writes its
    own shards and this process writes the manifest.
    """
    opts = options or EncodeOptions()
    model_dir = None
    if not isinstance(model, Tokenizer):
        model_dir = str(model)
        model = load_tokenizer(model_dir)
    out = Path(out)
    images = list_images(data, file_list)
    descriptor = _run_descriptor(model, images, opts)
    _prepare_output(out, descriptor, overwrite)
    ranges = shard_ranges(len(images), opts.shard_size)
    todo = [(i, s, e) for i, (s, e) in enumerate(ranges) if not shard_done(out, i, s, e)]
    if len(todo) < len(ranges):
        log.info("resuming: %d of %d shards already finished and verified", len(ranges) - len(todo), len(ranges))
    if opts.devices > 1 and todo:
        if model_dir is None:
            model_dir = str(out / WORKER_MODEL_DIR)
            model.save_pretrained(model_dir)  # an inference-only model saves as one
        threads = max(1, (os.cpu_count() or 1) // opts.devices) if not torch.cuda.is_available() else 1
        torch.multiprocessing.spawn(_worker, args=(model_dir, images, str(out), todo, opts, threads),
                                    nprocs=opts.devices, join=True)
        if model_dir == str(out / WORKER_MODEL_DIR):
            shutil.rmtree(model_dir, ignore_errors=True)
    else:
        dev = torch.device(device) if device is not None else next(model.parameters()).device  # type: ignore[attr-defined]
        _encode_shards(model, images, out, todo, opts, dev, progress)
    manifest = write_manifest(out, images, descriptor)
    log.info("%s: %d images -> %d rows of %dx%d tokens in %d shards (%d skipped)", out, len(images),
             manifest["num_rows"], *manifest["grid"], len(ranges), manifest["num_skipped"])
    return manifest


__all__ = ["EncodeError", "EncodeOptions", "encode_dataset"]
