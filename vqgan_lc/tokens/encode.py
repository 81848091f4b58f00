"""The dataset pipeline: images (a folder, WebDataset tars, a HF dataset) -> a token directory,
resumable, sharded, multi-device and multi-node.

Shard ``i`` holds the readable images of the ordered sources ``[i * shard_size, (i + 1) * shard_size)``,
so the result never depends on workers, devices, processes or on where a previous run stopped. A
shard is finished when its ``.npy`` (and, with ``--latents``, its ``latents-NNNNN.npy``) and its
``.json`` record exist and the sha256s match; a rerun skips finished shards, redoes the rest and
writes the manifest last.

Many processes: process ``r`` of ``W`` encodes the shards ``k`` with ``k % W == r``. ``W`` and ``r``
come from ``EncodeOptions.num_shards`` / ``shard_index`` (job arrays, no rendezvous), else from
torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (a gloo process group is opened for two
barriers: rank 0 prepares the directory before the others start and writes the manifest after
every rank has finished), else from SLURM's ``SLURM_NTASKS`` / ``SLURM_PROCID`` / ``SLURM_LOCALID``.
Without a process group, the process that finds every shard finished writes the manifest, and a
later single-process rerun of the same command finalizes too. The directory is byte-identical to a
one-process run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import itertools
import json
import logging
import os
import re
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

from .._io import OutputLock, atomic_write_json, prepare_output_dir
from ..data import (
    IMAGE_READING,
    RESIZE_RULES,
    Batch,
    ImageDataset,
    Preprocessing,
    ResizeRule,
    collate,
    draft_size,
)
from ..errors import EncodeError
from ..progress import Progress
from ..sources import ImageSource, open_source
from ..tokenizer import Tokenizer, load_tokenizer, tokenizer_identity
from .format import (
    MANIFEST,
    OWN_NAMES,
    RUN_FILE,
    TOKEN_DTYPE,
    TOKENS_FORMAT,
    TOKENS_FORMAT_VERSION,
    WORKER_MODEL_DIR,
    TokenFormatError,
    shard_done,
    shard_ranges,
    write_manifest,
    write_shard,
)
from .latents import (
    AUGMENTS,
    LATENT_DTYPES,
    Augment,
    LatentDtype,
    Variants,
    augment_record,
    write_latent_shard,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EncodeOptions:
    """How images become tokens. ``image_size``: short side resized (bicubic) then center-cropped
    (``None``, the default: the ``image_size`` of the tokenizer's ``preprocessing``, as the CLI).

    ``latents`` (``float16`` / ``float32``): also store the pre-quantization latents (``encode_latents``)
    as ``latents-NNNNN.npy``; ``augment`` (``flip`` / ``ten-crop``): store LlamaGen's variants per image,
    rows ``(A, h, w)`` (see ``vqgan_lc.tokens.latents``). Both are recorded in the manifest.

    ``shard_index`` / ``num_shards``: this process encodes the shards ``k`` with ``k % num_shards ==
    shard_index`` (job arrays); unset, torchrun's or SLURM's environment decides (one process: all).

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

    image_size: int | None = None
    batch_size: int = 32
    num_workers: int = 2
    shard_size: int = 4096
    on_error: Literal["skip", "fail"] = "skip"
    devices: int = 1
    jpeg_draft: bool = False
    cpu_parallel_batches: int = 0
    resize: ResizeRule = "shorter-side"
    latents: LatentDtype | None = None
    augment: Augment = "none"
    shard_index: int | None = None
    num_shards: int | None = None

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if min(self.image_size or 1, self.batch_size, self.shard_size, self.devices) < 1 or self.num_workers < 0:
            raise ValueError("image_size, batch_size, shard_size and devices must be positive")
        if self.latents is not None and self.latents not in LATENT_DTYPES:
            raise ValueError(f"latents must be one of {', '.join(LATENT_DTYPES)} (or None), got {self.latents!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if (self.shard_index is None) != (self.num_shards is None):
            raise ValueError("pass shard_index and num_shards together (this process's part of the shards)")
        if self.num_shards is not None and not 0 <= (self.shard_index or 0) < self.num_shards:
            raise ValueError(f"shard_index must lie in [0, {self.num_shards}), got {self.shard_index}")
        if self.cpu_parallel_batches < 0:
            raise ValueError("cpu_parallel_batches must be >= 0 (0: decoding processes feed the model)")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, got {self.resize!r}")


def _run_descriptor(model: Tokenizer, images: ImageSource, opts: EncodeOptions) -> dict[str, Any]:
    assert opts.image_size is not None
    h, w = model.latent_shape(opts.image_size, opts.image_size)
    preprocessing: dict[str, Any] = {"image_size": opts.image_size, "resize": "short-side-bicubic", "crop": "center",
                                     "range": "[-1, 1]", **IMAGE_READING}
    if opts.resize == "official":  # only when on, so directories written before the option existed still match
        preprocessing["resize"] = "official"  # albumentations SmallestMaxSize (OpenCV bilinear) + CenterCrop
    if opts.jpeg_draft:  # only when on, so directories written before the option existed still match
        preprocessing["jpeg_draft"] = {"min_short_side": draft_size(opts.image_size)[0]}
    descriptor = {
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
    # Each only when used, so directories written before these options existed still match.
    if images.kind != "folder":
        descriptor["source"] = images.describe_source()
    if opts.augment != "none":
        descriptor["augment"] = augment_record(opts.augment, opts.image_size)
    if opts.latents is not None:
        descriptor["latents"] = {"dtype": opts.latents, "row_shape": _latent_row_shape(model, opts)}
    return descriptor


def _latent_row_shape(model: Tokenizer, opts: EncodeOptions) -> list[int]:
    if not hasattr(model, "encode_latents") or not hasattr(model, "latents_to_ids"):
        raise EncodeError(f"the {model.kind} tokenizer has no continuous latents; drop --latents")
    s = int(opts.image_size or 0)
    p = next(model.parameters())  # type: ignore[attr-defined]
    with torch.inference_mode():
        d = int(model.encode_latents(torch.zeros(1, 3, s, s, device=p.device, dtype=p.dtype)).shape[1])
    h, w = model.latent_shape(s, s)
    n_aug = len(augment_record(opts.augment, s)["variants"])
    return [n_aug, d, h, w] if opts.augment != "none" else [d, h, w]


def _prepare_output(out: Path, descriptor: dict[str, Any], overwrite: bool, lock: OutputLock | None) -> None:
    """Make ``out`` a token directory of this run: a folder holding other files is refused
    (``prepare_output_dir``, ``lock`` held); token files of another run or of an unknown one are refused
    unless ``overwrite``, which always starts afresh (even when the options are unchanged). ``lock`` None:
    a process of a multi-process job that does not prepare the folder (a torchrun rank other than 0, after
    rank 0 did; a job-array task): nothing is swept or removed, since other processes may be writing."""
    if lock is not None:
        prepare_output_dir(out, "token directory", overwrite=overwrite, own_names=OWN_NAMES, resumable=True,
                           lock=lock)
    else:
        out.mkdir(parents=True, exist_ok=True)
    run_path = out / RUN_FILE
    if run_path.is_file():
        try:
            previous = json.loads(run_path.read_text())
        except ValueError:
            previous = None
        if previous != descriptor:
            diff = sorted(k for k in descriptor if not isinstance(previous, dict) or previous.get(k) != descriptor[k])
            raise TokenFormatError(
                f"{out} holds tokens made with another model, source list or options (differs in: "
                f"{', '.join(diff)}); choose another --out or pass --overwrite to replace them"
            )
    else:
        # Files of this format's names without the run's identity (e.g. a user's own labels.npy): never ours
        # to overwrite. (``--overwrite`` removed them in prepare_output_dir.)
        own = re.compile("|".join(OWN_NAMES))
        stray = sorted(p.name for p in out.iterdir() if p.name != WORKER_MODEL_DIR and own.fullmatch(p.name))
        if stray:
            raise TokenFormatError(f"{out} has token files from an unknown run ({', '.join(stray[:3])}); choose another "
                                   "--out or pass --overwrite to replace them")
    if lock is not None:  # the worker model copy of a killed run is never part of the result (temporaries
        shutil.rmtree(out / WORKER_MODEL_DIR, ignore_errors=True)  # were swept by prepare_output_dir)
    atomic_write_json(run_path, descriptor)




def _encode_shards(
    model: Tokenizer,
    images: ImageSource,
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
    size = int(opts.image_size or 0)
    h, w = model.latent_shape(size, size)
    order = [i for _, s, e in shards for i in range(s, e)]
    draft = draft_size(size) if opts.jpeg_draft else None
    augmented = opts.augment != "none"
    transform = Variants(size, opts.augment) if augmented else Preprocessing(size, resize=opts.resize)
    row: tuple[int, ...] = (len(augment_record(opts.augment, size)["variants"]), h, w) if augmented else (h, w)
    dataset = ImageDataset(images, transform, draft=draft)
    lanes = opts.cpu_parallel_batches if device.type == "cpu" else 0
    if opts.cpu_parallel_batches and not lanes:
        log.info("cpu_parallel_batches applies to a CPU device only; %s uses decoding processes", device)

    def encode(x: torch.Tensor) -> Rows:
        x = x.to(device, non_blocking=True)
        lead = x.shape[:-3]  # (B,) or (B, A)
        flat = x.reshape(-1, *x.shape[-3:])
        lat = None
        if opts.latents is not None:
            z = model.encode_latents(flat)  # type: ignore[attr-defined]
            ids = model.latents_to_ids(z)  # type: ignore[attr-defined]
            lat = z.to("cpu", torch.float32).numpy().reshape(*lead, *z.shape[1:])
        else:
            ids = model.encode(flat)
        return ids.to("cpu", torch.int64).numpy().astype(TOKEN_DTYPE).reshape(*lead, h, w), lat

    by_source: dict[int, np.ndarray] = {}
    lat_by_source: dict[int, np.ndarray] = {}
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
                        f"cannot read {images.location(i)} ({reason}); finished shards are kept, "
                        "fix or remove the file and rerun, or pass --on-error skip"
                    )
                log.warning("skipped %s: %s", images.paths[i], reason)
                failed[i] = reason
            if ids is not None:
                for k, i in enumerate(batch.indices):
                    by_source[i] = ids[0][k]
                    if ids[1] is not None:
                        lat_by_source[i] = ids[1][k]
            bar.update(len(batch.indices) + len(batch.failed))
            while pending and all(j in by_source or j in failed for j in range(pending[0][1], pending[0][2])):
                index, s, e = pending.pop(0)
                extra = None
                if opts.latents is not None:
                    kept = [i for i in range(s, e) if i in by_source]
                    lat = (np.stack([lat_by_source.pop(i) for i in kept]) if kept  # (a 1-image pass only when empty)
                           else np.empty((0, *_latent_row_shape(model, opts)), np.float32))
                    extra = {"latents": write_latent_shard(out, index, lat, opts.latents)}
                write_shard(out, images, index, s, e, by_source, failed, row, extra)
    finally:
        batches.close()  # stops the decoding processes or threads
        bar.close()


Rows = tuple[np.ndarray, "np.ndarray | None"]  # ids (B, [A,] h, w) uint32; latents (B, [A,] D', h, w) float32
Encoded = tuple[Batch, "Rows | None"]


def _loader_batches(dataset: ImageDataset, order: list[int], opts: EncodeOptions,
                    encode: Callable[[torch.Tensor], Rows], device: torch.device) -> Generator[Encoded, None, None]:
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
                      encode: Callable[[torch.Tensor], Rows], lanes: int) -> Generator[Encoded, None, None]:
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


def _worker(rank: int, model_dir: str, images: ImageSource, out: str, shards: list, opts: EncodeOptions,
            threads: int) -> None:
    exit_with_parent()  # orphans would keep a GPU busy and write into a directory a rerun now owns
    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    model = load_tokenizer(model_dir)
    mine = [s for k, s in enumerate(shards) if k % opts.devices == rank]
    _encode_shards(model, images, Path(out), mine, opts, device, progress=rank == 0)


# ----------------------------------------------------------------------------------------- many processes
Launcher = Literal["single", "job-array", "torchrun", "slurm"]


@dataclass(frozen=True)
class Topology:
    """This process's place in a job: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: Launcher = "single"


def process_topology(opts: EncodeOptions, env: dict[str, str] | None = None) -> Topology:
    """``shard_index``/``num_shards`` first, then torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, then
    SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; otherwise one process."""
    env = dict(os.environ) if env is None else env
    if opts.num_shards is not None:
        return Topology(int(opts.shard_index or 0), opts.num_shards, 0, "job-array")
    for rank_key, world_key, local_key, launcher in (("RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun"),
                                                      ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm")):
        if world_key in env and rank_key in env:
            try:
                rank, world, local = int(env[rank_key]), int(env[world_key]), int(env.get(local_key, "0"))
            except ValueError:
                raise EncodeError(f"{rank_key}={env[rank_key]!r} / {world_key}={env[world_key]!r} are not integers; "
                                  "check the launcher's environment") from None
            if world < 1 or not 0 <= rank < world:
                raise EncodeError(f"{rank_key}={rank} is not in [0, {world_key}={world}); check the launcher")
            if world > 1:
                return Topology(rank, world, local, launcher)  # type: ignore[arg-type]
    return Topology()


def _process_group(topo: Topology) -> tuple[Any, bool]:
    """The process group to synchronise on and whether it was opened here: torch.distributed's default
    group when initialised, else a gloo group when torchrun's rendezvous variables are set; ``None`` for
    job arrays and SLURM without a rendezvous."""
    import torch.distributed as dist

    if topo.world == 1 or topo.launcher == "job-array" or not dist.is_available():
        return None, False
    if dist.is_initialized():
        return dist.group.WORLD, False
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None, False
    # Ranks may finish hours apart: the barrier must outlast the slowest rank's share.
    dist.init_process_group("gloo", rank=topo.rank, world_size=topo.world, timeout=datetime.timedelta(days=7))
    return dist.group.WORLD, True


def _barrier(group: Any) -> None:
    import torch.distributed as dist

    dist.barrier(group=group)


def _default_device(model: Tokenizer, topo: Topology) -> torch.device:
    """The model's device when it is not the CPU, else the best available (``cuda[:local_rank]``, else cpu)."""
    current = next(model.parameters()).device  # type: ignore[attr-defined]
    if current.type != "cpu":
        return current
    if torch.cuda.is_available():
        return torch.device("cuda", topo.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_options(model: Tokenizer, options: EncodeOptions | None) -> EncodeOptions:
    """``options`` with ``image_size=None`` replaced by the tokenizer's ``preprocessing["image_size"]``."""
    opts = options or EncodeOptions()
    if opts.image_size is None:
        opts = dataclasses.replace(opts, image_size=int(model.preprocessing["image_size"]))
    return opts


def encode_dataset(
    model: Tokenizer | str | os.PathLike,
    data: str | os.PathLike | ImageSource,
    out: str | os.PathLike,
    *,
    file_list: str | os.PathLike | None = None,
    options: EncodeOptions | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every image of ``data`` into the token directory ``out``.

    ``data``: an image folder (or ``file_list`` under it), ``"wds:PATTERN"``, ``"hf:NAME_OR_DIR[:SPLIT]"``
    or an ``ImageSource`` (``vqgan_lc.sources``). Defaults as the CLI: the image size of the tokenizer's
    preprocessing and, unless ``device`` is given, the model's device if it is not the CPU, else CUDA
    when available (``cuda:LOCAL_RANK`` under torchrun), else the CPU.

    Returns the manifest. Resumable: rerunning the same call after a crash redoes only unfinished
    shards and the directory ends byte-identical to an uninterrupted run. ``options.devices > 1``
    starts one process per device (CUDA GPUs, else CPU processes sharing the cores); each writes its
    own shards and this process writes the manifest. Under torchrun / SLURM / ``num_shards`` each
    process encodes its share (see the module docstring); a process that returns before every shard
    exists gets ``{"complete": False, "shards_done": k, "num_shards": n}`` instead of the manifest.
    """
    model_dir = None
    if not isinstance(model, Tokenizer):
        model_dir = str(model)
        model = load_tokenizer(model_dir)
    opts = resolve_options(model, options)
    topo = process_topology(opts)
    if topo.world > 1 and opts.devices > 1:
        raise EncodeError("--devices > 1 cannot be combined with several processes (torchrun, SLURM or "
                          "--num-shards); start one process per device instead")
    out = Path(out)
    images = open_source(data, file_list)
    descriptor = _run_descriptor(model, images, opts)
    group, opened = _process_group(topo)
    if topo.world > 1 and group is None and overwrite:
        raise EncodeError("--overwrite cannot be used by the tasks of a job array (they would delete each other's "
                          "shards); remove the directory or run once with --overwrite and one process first")
    # One run per directory: the process that prepares it holds its lock (a torchrun job's rank 0; the
    # tasks of a job array run side by side without one).
    lock = OutputLock(out, option="--out") if topo.world == 1 or (group is not None and topo.rank == 0) else None
    try:
        return _encode_all(model, model_dir, images, out, opts, descriptor, topo, group, overwrite, device, progress,
                           lock)
    finally:
        if lock is not None:
            lock.release()
        if opened:
            import torch.distributed as dist

            dist.destroy_process_group()


def _encode_all(model: Tokenizer, model_dir: str | None, images: ImageSource, out: Path, opts: EncodeOptions,
                descriptor: dict[str, Any], topo: Topology, group: Any, overwrite: bool,
                device: str | torch.device | None, progress: bool, lock: OutputLock | None) -> dict[str, Any]:
    if group is not None:
        if topo.rank == 0:
            _prepare_output(out, descriptor, overwrite, lock)
        _barrier(group)  # the others start once rank 0 has cleared leftovers and written encode.json
        if topo.rank != 0:
            _prepare_output(out, descriptor, False, None)
    else:
        _prepare_output(out, descriptor, overwrite, lock)
    ranges = shard_ranges(len(images), opts.shard_size)
    mine = [(i, s, e) for i, (s, e) in enumerate(ranges) if i % topo.world == topo.rank]
    todo = [(i, s, e) for i, s, e in mine if not shard_done(out, i, s, e, images)]
    if len(todo) < len(mine):
        log.info("resuming: %d of %d shards already finished and verified", len(mine) - len(todo), len(mine))
    if topo.world > 1:
        log.info("process %d of %d (%s): %d of the %d shards", topo.rank, topo.world, topo.launcher, len(mine),
                 len(ranges))
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
        dev = torch.device(device) if device is not None else _default_device(model, topo)
        _encode_shards(model, images, out, todo, opts, dev, progress and topo.rank == 0)
    if group is not None:
        _barrier(group)  # every rank's shards exist
        if topo.rank == 0:
            manifest = write_manifest(out, images, descriptor)
        _barrier(group)  # the manifest exists
        manifest = json.loads((out / MANIFEST).read_text())
    else:
        if topo.world > 1:
            done = sum(shard_done(out, i, s, e) for i, (s, e) in enumerate(ranges))
            if done < len(ranges):
                log.info("%d of %d shards finished; the last task (or a rerun) writes the manifest", done, len(ranges))
                return {"complete": False, "shards_done": done, "num_shards": len(ranges)}
        manifest = write_manifest(out, images, descriptor)
    log.info("%s: %d images -> %d rows of %dx%d tokens in %d shards (%d skipped)", out, len(images),
             manifest["num_rows"], *manifest["grid"], len(ranges), manifest["num_skipped"])
    return manifest


__all__ = ["EncodeError", "EncodeOptions", "Topology", "encode_dataset", "process_topology", "resolve_options"]
