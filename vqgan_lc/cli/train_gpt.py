"""``vqgan-lc train-gpt``: train the GPT prior on token directories (PyTorch Lightning), export a GPT directory.

The YAML has two sections, ``model`` (a ``preset`` and/or ``GPTConfig`` fields; vocabulary, grid,
classes and prefix come from the token directories) and ``train`` (``GPTTrainConfig`` fields)::

    # VQGAN-LC + GPT: class-conditional GPT over VQGAN-LC ids
    vqgan-lc train-gpt --tokens tokens-vqgan/ --config configs/gpt_vqgan_lc_404m.yaml --out gpt/
    # DiGIT stage 1 (DiGIT ids) and stage 2 (DiGIT ids as prefix -> VQGAN-LC ids); same image folder
    vqgan-lc train-gpt --tokens tokens-digit/ --config configs/gpt_digit_stage1_base.yaml --out stage1/
    vqgan-lc train-gpt --tokens tokens-vqgan/ --prefix-tokens tokens-digit/ \\
        --config configs/gpt_digit_stage2_base.yaml --out stage2/
    # CPU smoke run
    vqgan-lc train-gpt --tokens tokens/ --config configs/gpt_tiny_cpu.yaml --out gpt-tiny/ --max-steps 50

``--set train.lr=1e-4`` (repeatable) overrides any YAML value; ``--resume`` continues from
``OUT/lightning/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ._args import positive_float, positive_int

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", required=True, help="token directory of the ids to model (vqgan-lc encode output)")
    p.add_argument("--prefix-tokens", help="token directory of the same images used as prefix (DiGIT stage 2)")
    p.add_argument("--config", required=True, help="YAML with `model:` and `train:` sections (configs/gpt_*.yaml)")
    p.add_argument("--out", required=True, help="output GPT directory (config.json + model.safetensors)")
    p.add_argument("--max-steps", type=positive_int, help="override train.max_steps")
    p.add_argument("--batch-size", type=positive_int, help="override train.batch_size")
    p.add_argument("--lr", type=positive_float, help="override train.lr")
    p.add_argument("--accelerator", help="override train.accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", help="override train.devices")
    p.add_argument("--seed", type=int, help="override train.seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any YAML value, e.g. --set model.n_layer=4 (value parsed as YAML)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/lightning/checkpoints/last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_config(path: str, sets: list[str]) -> dict[str, Any]:
    """The YAML file with ``--set`` overrides applied; only ``model`` and ``train`` sections."""
    import yaml

    from ..errors import VQGANLCError

    if not Path(path).is_file():
        raise VQGANLCError(f"config file {path} does not exist")
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(cfg) - {"model", "train"})
    if unknown:
        raise VQGANLCError(f"{path}: unknown sections {', '.join(unknown)} (expected model and train)")
    for item in sets:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in ("model", "train"):
            raise VQGANLCError(f"--set {item!r}: expected model.KEY=VALUE or train.KEY=VALUE")
        cfg.setdefault(section, {})[name] = yaml.safe_load(value)
    return {"model": dict(cfg.get("model") or {}), "train": dict(cfg.get("train") or {})}


def run(args: argparse.Namespace) -> int:
    from ..errors import VQGANLCError
    from ..generate.gpt import GPT
    from ..generate.module import fit_gpt

    cfg = load_config(args.config, args.set)
    train = cfg["train"]
    for key in ("max_steps", "batch_size", "lr", "accelerator", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.devices is not None:
        train["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    try:
        out = fit_gpt(args.tokens, args.out, model=cfg["model"], train=train, prefix_tokens=args.prefix_tokens,
                      resume=args.resume, progress=not args.no_progress)
    except ValueError as e:  # config values that do not fit the data
        raise VQGANLCError(str(e)) from e
    gpt = GPT.from_pretrained(out)
    c = gpt.config
    print(f"{out}: GPT {c.n_layer}x{c.n_embd} ({gpt.num_parameters() / 1e6:.2f}M parameters), {c.n_codes} codes, "
          f"{c.n_classes} classes{', prefix ' + str(c.prefix_len) if c.prefix_vocab else ''}; "
          f"{gpt.provenance.get('steps')} steps, final loss {gpt.provenance.get('final_loss')}")
    return 0
