"""``vqgan-lc train``: train or fine-tune a tokenizer with Lightning (LightningCLI).

CLI style of the training commands. ``train`` and ``train-gpt`` read one YAML recipe named by
``--config NAME_OR_PATH``: a file, or the name of a config shipped in ``vqgan_lc/configs``
(``tiny_cpu``, ``vqgan_lc_f16_100k``, ...; ``gpt_tiny_cpu``, ... for ``train-gpt``); every value of it
can then be overridden on the command line. ``train`` hands its arguments to LightningCLI, so
overrides are ``--SECTION.FIELD VALUE`` (``--model.optim.max_steps 50``, ``--data.batch_size 4``,
``--trainer.devices 2``) and ``--print_config`` shows the full resolved recipe. ``train-gpt`` takes the
same ``--SECTION.FIELD VALUE`` overrides of its two sections (``--train.lr 1e-4``), parsed by plain
argparse (its model is sized from the token directories; see ``cli/train_gpt.py``)::

    vqgan-lc train --config tiny_cpu --data.data photos/ --codebook codebook.safetensors
    vqgan-lc train --config vqgan_lc_f16_100k --data.data imagenet/ \\
        --data.file_list train.txt --codebook codebook-100K.pth --model.loss.lpips_weights vgg16-397923af.pth
    vqgan-lc train --config tiny_cpu --data.data my_photos/ --init-from converted_model/   # fine-tune
    vqgan-lc train --config tiny_cpu ... --ckpt-path last                                  # resume
    vqgan-lc train --config tiny_cpu --print_config                                        # full config
    vqgan-lc export runs/tiny_cpu/checkpoints/last.ckpt --out my_model [--inference-only]  # .ckpt -> model dir

Shortcuts: ``--codebook FILE`` = ``--model.model.codebook FILE``; ``--init-from DIR`` =
``--model.model.init_from DIR``; ``--ckpt-path P`` = ``--ckpt_path P`` (``last`` resumes from
``<trainer.default_root_dir>/checkpoints/last.ckpt``; it stops with one sentence when there is none).
``last.ckpt`` is rewritten every ``--checkpoint.every_n_train_steps`` optimizer steps (default 1000;
Lightning's ``global_step`` counts both optimizers) and every ``--checkpoint.train_time_interval``
(default ``0:30:00``), whichever comes first. Checkpoints go to ``<default_root_dir>/checkpoints``,
CSV logs to ``<default_root_dir>/csv`` (and TensorBoard logs to ``<default_root_dir>/tensorboard`` with
``--tensorboard true``, which needs the ``tensorboard`` package), reconstruction grids to
``<default_root_dir>/reconstructions`` and the exported model directory to ``<default_root_dir>/model``.
A root that already holds a run's checkpoints or exported model is refused without ``--ckpt-path``
(resume it) unless ``--overwrite`` (the earlier checkpoints and exports are removed first; other files
are kept), so a second run never replaces the first one's ``model/`` silently; and while a run trains,
rank 0 holds an advisory lock (``<default_root_dir>/.vqgan-lc.lock``) that stops a second run into the
same root at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..configs import config_path
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# `last.ckpt` is written every DEFAULT_CHECKPOINT_STEPS of Lightning's global_step (which counts both
# optimizers: 2 per batch once the discriminator trains, so 1000 = 500 to 1000 batches) and every
# DEFAULT_CHECKPOINT_INTERVAL of wall time, whichever comes first (train.PeriodicCheckpoint).
DEFAULT_CHECKPOINT_STEPS = 1000
DEFAULT_CHECKPOINT_INTERVAL = "0:30:00"

_SHORTCUTS = {"--codebook": "--model.model.codebook", "--init-from": "--model.model.init_from",
              "--ckpt-path": "--ckpt_path"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Nothing to declare: `vqgan-lc` hands every argument after `train` to LightningCLI untouched
    # (cli/main.py, OWN_PARSER); `vqgan-lc train --help` lists them all.
    p.usage = "vqgan-lc train --config NAME_OR_PATH [--SECTION.FIELD VALUE ...] (see `vqgan-lc train --help`)"


def translate(rest: list[str]) -> list[str]:
    """The command line with the shortcuts expanded and ``--config NAME`` resolved to a file."""
    out: list[str] = []
    config_next = False
    for a in rest:
        if config_next:
            out.append(str(config_path(a)))
            config_next = False
            continue
        name, eq, value = a.partition("=")
        if name == "--config":
            if eq:
                out.append(f"--config={config_path(value)}")
            else:
                out.append(a)
                config_next = True
            continue
        if a == "--overwrite":  # a plain flag, like the other commands' (LightningCLI wants a value)
            out.append("--overwrite=true")
            continue
        out.append(_SHORTCUTS[name] + eq + value if name in _SHORTCUTS else a)
    return out


def build_cli(args: list[str], *, run: bool = True) -> Any:
    """The LightningCLI of ``vqgan-lc train`` on ``args``; fits when ``run`` (returns the CLI object)."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

    from ..train import ExportModel, ImageDataModule, PeriodicCheckpoint, ReconstructionGrid, VQGANLCModule

    def checkpoint_dir(root: str | None) -> str:
        return os.path.join(root or os.getcwd(), "checkpoints")

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="resume from this .ckpt, or 'last' (<default_root_dir>/checkpoints/last.ckpt)")
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="train afresh into a default_root_dir that holds an earlier run (its "
                                     "checkpoints and exported models are removed first)")
            parser.add_argument("--tensorboard", type=bool, default=False,
                                help="also log to <default_root_dir>/tensorboard (needs the tensorboard package)")
            parser.add_lightning_class_args(PeriodicCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                                 "checkpoint.every_n_train_steps": DEFAULT_CHECKPOINT_STEPS,
                                 "checkpoint.train_time_interval": DEFAULT_CHECKPOINT_INTERVAL})
            parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
            parser.add_lightning_class_args(ReconstructionGrid, "recon_grid")
            parser.add_lightning_class_args(ExportModel, "export")

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            cfg = self._get(self.config_init, "trainer", default={})
            if cfg.get("logger") in (None, True):
                root = cfg.get("default_root_dir") or os.getcwd()
                loggers: list[Logger] = [CSVLogger(root, name="csv")]
                if self._get(self.config_init, "tensorboard", default=False):
                    if importlib.util.find_spec("tensorboard") is None:
                        raise ConfigError("--tensorboard true needs the tensorboard package: pip install tensorboard "
                                          "(or the vqgan-lc[tensorboard] extra), or drop the flag")
                    loggers.insert(0, TensorBoardLogger(root, name="tensorboard"))
                kwargs["logger"] = loggers
            return super().instantiate_trainer(**kwargs)

    with warnings.catch_warnings():  # `vqgan-lc train` hands LightningCLI its own arguments on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = TrainCLI(
            VQGANLCModule,
            ImageDataModule,
            args=args,
            run=False,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # the module's own two Adams; it sets their learning rates
            parser_kwargs={"prog": "vqgan-lc train", "description": "Train or fine-tune a VQGAN-LC tokenizer (--config NAME_OR_PATH: "
                                          "tiny_cpu, vqgan_lc_f16_100k, vqgan_lc_f8_100k or a YAML file).",
                           "exit_on_error": False},  # a usage error is raised; run() prints it as one line
        )
    if run:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        from .._io import OutputLock
        from ._checks import check_output

        check_output(cli.trainer.default_root_dir, "folder", "--trainer.default_root_dir")  # before any step
        ckpt_path = resolve_ckpt_path(cli.config.get("ckpt_path"), cli.trainer)
        # Rank from the launcher's environment: the strategy learns its rank only inside fit.
        first = getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") == "0"
        lock = OutputLock(cli.trainer.default_root_dir, option="--trainer.default_root_dir")
        try:
            if first:  # one run per root: a second `vqgan-lc train` into it stops at once
                lock.acquire()
                if ckpt_path is None:
                    check_fresh_root(cli.trainer.default_root_dir, overwrite=bool(cli.config.get("overwrite")))
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        finally:
            lock.release()
    return cli


def check_fresh_root(root: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse (``OutputExistsError``) to start a new run in ``root`` when an earlier one left checkpoints or
    exported models there, unless ``overwrite``, which removes those (and nothing else)."""
    import shutil

    from ..errors import OutputExistsError

    root = Path(root)
    earlier = sorted((root / "checkpoints").glob("*.ckpt")) if (root / "checkpoints").is_dir() else []
    earlier += sorted(d for d in root.glob("model*") if (d / "config.json").is_file()) if root.is_dir() else []
    if not earlier:
        return
    if not overwrite:
        shown = ", ".join(str(p.relative_to(root)) for p in earlier[:3]) + (" ..." if len(earlier) > 3 else "")
        raise OutputExistsError(f"{root} already holds a training run ({shown}); resume it with --ckpt-path last, "
                                "choose another --trainer.default_root_dir, or pass --overwrite to train afresh there")
    log.info("--overwrite: removing the earlier run's checkpoints and exported models in %s", root)
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def resolve_ckpt_path(value: str | None, trainer: Any) -> str | None:
    """``--ckpt-path``: ``None``, or a checked Lightning checkpoint file (``last``: the newest ``last*.ckpt``).

    Refuses with a :class:`~vqgan_lc.errors.CheckpointError` (one sentence) instead of Lightning's
    warning-and-start-from-step-0 when ``last`` finds nothing, and instead of a traceback for a
    missing, truncated or foreign file. The file is read with ``torch.load(weights_only=True)``, as
    Lightning reads it: no arbitrary pickle runs.
    """
    if value is None:
        return None
    if value == "last":
        dirs = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
        found = [p for d in dirs for p in Path(d).glob("last*.ckpt") if p.is_file()]
        if not found:
            where = " or ".join(dirs) or "the checkpoint folder"
            raise CheckpointError(f"--ckpt-path last: no last.ckpt in {where}; start without --ckpt-path, or give "
                                  "the same --trainer.default_root_dir as the run to resume")
        path = max(found, key=lambda p: p.stat().st_mtime)
    else:
        path = Path(value)
    from ..train.checkpoints import check_lightning_checkpoint

    check_lightning_checkpoint(path)
    return str(path)


def run(args: argparse.Namespace) -> int:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .main import one_line

    try:
        build_cli(translate(list(args.rest)))
    except argparse.ArgumentError as e:  # jsonargparse's usage error, raised (exit_on_error False), not printed
        print(f"vqgan-lc train: error: {one_line(str(e))} (vqgan-lc train --help lists the options)", file=sys.stderr)
        return 2
    except MisconfigurationException as e:  # Lightning refused a --trainer value (devices 0, an unknown accelerator)
        raise ConfigError(f"{one_line(str(e)).rstrip('.')}; fix the --trainer option") from e
    return 0
