"""``vqgan-lc train``: train or fine-tune a tokenizer with PyTorch Lightning (LightningCLI).

Everything after ``train`` goes to LightningCLI, so any field of the YAML can be overridden::

    vqgan-lc train --config configs/tiny_cpu.yaml --data.data photos/ --model.codebook codebook.safetensors
    vqgan-lc train --config configs/vqgan_lc_f16_100k.yaml --data.data imagenet/ \\
        --data.file_list train.txt --model.codebook codebook-100K.pth --model.lpips_weights vgg16-397923af.pth
    vqgan-lc train --config configs/tiny_cpu.yaml --data.data my_photos/ --init-from converted_model/   # fine-tune
    vqgan-lc train --config configs/tiny_cpu.yaml ... --ckpt-path last                             # resume
    vqgan-lc train --export-checkpoint runs/tiny_cpu/checkpoints/last.ckpt --out my_model [--inference-only]
    vqgan-lc train --config configs/tiny_cpu.yaml --print_config                                   # full config

Shortcuts: ``--init-from DIR`` = ``--model.init_from DIR``; ``--ckpt-path P`` = ``--ckpt_path P`` (``last``
resumes from ``<trainer.default_root_dir>/checkpoints/last.ckpt``). Checkpoints go to
``<default_root_dir>/checkpoints``, TensorBoard and CSV logs to ``<default_root_dir>/{tensorboard,csv}``,
reconstruction grids to ``<default_root_dir>/reconstructions`` and the exported model directory to
``<default_root_dir>/model``.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from typing import Any

log = logging.getLogger(__name__)

_SHORTCUTS = {"--init-from": "--model.init_from", "--ckpt-path": "--ckpt_path"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="LightningCLI arguments: --config FILE, --model.*, --data.*, --trainer.*, ... "
                        "(`vqgan-lc train --help` lists them all)")
    # LightningCLI parses the options itself: hand every argument after `train` over untouched
    # (argparse's REMAINDER would refuse arguments that start with "--").
    defaults = p._defaults  # set_defaults(...) of main.build_parser, e.g. the module name

    def parse_known_args(args: list[str] | None = None, namespace: argparse.Namespace | None = None):  # noqa: ANN202
        ns = namespace if namespace is not None else argparse.Namespace()
        for k, v in defaults.items():
            setattr(ns, k, v)
        ns.rest = list(args or [])
        return ns, []

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _translate(rest: list[str]) -> list[str]:
    out = []
    for a in rest:
        name, eq, value = a.partition("=")
        out.append(_SHORTCUTS[name] + eq + value if name in _SHORTCUTS else a)
    return out


def _export(rest: list[str]) -> int:
    from ..train import export_checkpoint

    p = argparse.ArgumentParser(prog="vqgan-lc train --export-checkpoint")
    p.add_argument("--export-checkpoint", required=True, metavar="CKPT", help="a .ckpt written by vqgan-lc train")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--inference-only", action="store_true", help="keep only the projected N x D' codes")
    a = p.parse_args(rest)
    path = export_checkpoint(a.export_checkpoint, a.out, inference_only=a.inference_only)
    print(f"wrote {path}")
    return 0


def build_cli(args: list[str], *, run: bool = True) -> Any:
    """The LightningCLI of ``vqgan-lc train`` on ``args``; fits when ``run`` (returns the CLI object)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from ..train import ExportModel, ImageDataModule, ReconstructionGrid, VQGANLCModule

    def checkpoint_dir(root: str | None) -> str:
        return os.path.join(root or os.getcwd(), "checkpoints")

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="resume from this .ckpt, or 'last' (<default_root_dir>/checkpoints/last.ckpt)")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
            parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
            parser.add_lightning_class_args(ReconstructionGrid, "recon_grid")
            parser.add_lightning_class_args(ExportModel, "export")

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            cfg = self._get(self.config_init, "trainer", default={})
            if cfg.get("logger") in (None, True):
                root = cfg.get("default_root_dir") or os.getcwd()
                kwargs["logger"] = [TensorBoardLogger(root, name="tensorboard"), CSVLogger(root, name="csv")]
            return super().instantiate_trainer(**kwargs)

    with warnings.catch_warnings():  # `vqgan-lc train` hands LightningCLI its own arguments on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = TrainCLI(
            VQGANLCModule,
            ImageDataModule,
            args=args,
            run=False,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # the module's own two Adams and schedules
            parser_kwargs={"description": "Train or fine-tune a VQGAN-LC tokenizer (see configs/*.yaml)."},
        )
    if run:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
    return cli


def run(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if any(a == "--export-checkpoint" or a.startswith("--export-checkpoint=") for a in rest):
        return _export(rest)
    build_cli(_translate(rest))
    return 0
