"""``vqgan-lc train-gpt``: train the GPT prior on token directories (PyTorch Lightning), export a GPT directory.

The YAML has two sections, ``model`` (a ``preset`` and/or ``GPTConfig`` fields; vocabulary, grid,
classes and prefix come from the token directories) and ``train`` (``GPTTrainConfig`` fields)::

    # VQGAN-LC + GPT: class-conditional GPT over VQGAN-LC ids
    vqgan-lc train-gpt --tokens tokens-vqgan/ --config gpt_vqgan_lc_404m --out gpt/
    # DiGIT stage 1 (DiGIT ids) and stage 2 (DiGIT ids as prefix -> VQGAN-LC ids); same image folder
    vqgan-lc train-gpt --tokens tokens-digit/ --config gpt_digit_stage1_base --out stage1/
    vqgan-lc train-gpt --tokens tokens-vqgan/ --prefix-tokens tokens-digit/ \\
        --config gpt_digit_stage2_base --out stage2/
    # CPU smoke run
    vqgan-lc train-gpt --tokens tokens/ --config gpt_tiny_cpu --out gpt-tiny/ --max-steps 50
    # DiGIT as published: images re-tokenized every step after Resize 256 + RandomCrop 256 + flip
    vqgan-lc train-gpt --images imagenet/train --tokenizer digit-tokenizer/ \
        --config gpt_digit_stage1_base --out stage1/
    vqgan-lc train-gpt --images imagenet/train --tokenizer mage-vqgan/ --prefix-tokenizer digit-tokenizer/ \
        --config gpt_digit_stage2_base --out stage2/

CLI style: the one of ``vqgan-lc train`` (see ``vqgan_lc/cli/train.py``): ``--config NAME_OR_PATH``
names a YAML file or a config shipped in ``vqgan_lc/configs``, and ``--SECTION.FIELD VALUE`` overrides
any value of it (``--train.lr 1e-4``, ``--model.n_layer 4``; the value is read as YAML). ``train``
hands its arguments to LightningCLI; ``train-gpt`` parses them itself (plain argparse) because its
model is sized from the token directories before anything is built. ``--set train.lr=1e-4`` is the
older spelling of the same override; ``--resume`` continues from ``OUT/lightning/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ._args import devices, positive_float, positive_int, seed
from ._checks import check_output

log = logging.getLogger(__name__)


SECTIONS = ("model", "train")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # `vqgan-lc` hands every argument after `train-gpt` to run() untouched (cli/main.py, OWN_PARSER),
    # which parses them with build_parser() plus the --SECTION.FIELD overrides.
    p.usage = ("vqgan-lc train-gpt (--tokens DIR | --images DIR --tokenizer DIR) --config NAME_OR_PATH --out DIR "
               "[--SECTION.FIELD VALUE ...]")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vqgan-lc train-gpt`` (``--SECTION.FIELD VALUE`` overrides come on top)."""
    p = argparse.ArgumentParser(prog="vqgan-lc train-gpt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", help="token directory of the ids to model (vqgan-lc encode output; variants written "
                                     "by encode --augment are drawn at random)")
    p.add_argument("--prefix-tokens", help="token directory of the same images used as prefix (DiGIT stage 2)")
    p.add_argument("--images", help="instead of --tokens: an image folder (or the root of --file-list) tokenized "
                                    "online at every step after Resize + RandomCrop (train.image_size) + flip "
                                    "(train.image_flip), as DiGIT trains")
    p.add_argument("--file-list", help="--images: text file of relative/path[,label] lines")
    p.add_argument("--tokenizer", help="--images: tokenizer directory (or name) that makes the target ids")
    p.add_argument("--prefix-tokenizer", help="--images: tokenizer directory of the prefix ids (DiGIT stage 2: the "
                                              "DiGIT tokenizer)")
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH",
                   help="YAML with `model:` and `train:` sections: a file or a shipped config (gpt_tiny_cpu, "
                        "gpt_vqgan_lc_404m, gpt_digit_stage1_base, gpt_digit_stage2_base, gpt_digit_stage2_nar_base, gpt_digit_stage2_nar_tiny)")
    p.add_argument("--out", required=True, help="output GPT directory (config.json + model.safetensors)")
    p.add_argument("--max-steps", type=positive_int, help="override train.max_steps")
    p.add_argument("--batch-size", type=positive_int, help="override train.batch_size")
    p.add_argument("--lr", type=positive_float, help="override train.lr")
    p.add_argument("--accelerator", choices=ACCELERATORS, help="override train.accelerator")
    p.add_argument("--devices", type=devices, help="override train.devices (auto, -1, a count or indices 0,1)")
    p.add_argument("--seed", type=seed, help="override train.seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any YAML value, e.g. --set model.n_layer=4 (value parsed as YAML)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/lightning/checkpoints/last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def split_overrides(extra: list[str]) -> tuple[list[str], list[str]]:
    """``--SECTION.FIELD VALUE`` / ``--SECTION.FIELD=VALUE`` pairs as ``SECTION.FIELD=VALUE`` items, and the
    arguments that are not such overrides."""
    sets: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(extra):
        a = extra[i]
        key, eq, value = a[2:].partition("=")
        if a.startswith("--") and key.partition(".")[0] in SECTIONS and "." in key:
            if not eq:
                if i + 1 >= len(extra):
                    unknown.append(a)
                    break
                value, i = extra[i + 1], i + 1
            sets.append(f"{key}={value}")
        else:
            unknown.append(a)
        i += 1
    return sets, unknown


def _yaml_value(text: str) -> Any:
    """``text`` read as YAML, except that ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4``)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if value.lower() not in ("inf", "-inf", "nan", "infinity") else value
        except ValueError:
            return value
    return value


def load_config(path: str, sets: list[str]) -> dict[str, Any]:
    """The YAML file with ``SECTION.KEY=VALUE`` overrides applied; only ``model`` and ``train`` sections."""
    import yaml

    from ..configs import config_path
    from ..errors import VQGANLCError

    file = config_path(path)
    try:
        cfg = yaml.safe_load(file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VQGANLCError(f"{file} is not valid YAML ({first}); fix it or pass a shipped config such as gpt_tiny_cpu") from e
    if not isinstance(cfg, dict):
        raise VQGANLCError(f"{file} holds a YAML {type(cfg).__name__}, not the mapping of `model:` and `train:` "
                           "sections; fix it or pass a shipped config such as gpt_tiny_cpu")
    unknown = sorted(map(str, set(cfg) - {"model", "train"}))
    if unknown:
        raise VQGANLCError(f"{file}: unknown sections {', '.join(unknown)} (expected model and train)")
    for section in ("model", "train"):
        if cfg.get(section) is not None and not isinstance(cfg[section], dict):
            raise VQGANLCError(f"{file}: section {section} is a YAML {type(cfg[section]).__name__}, not a mapping of "
                               "FIELD: VALUE lines; fix it")
    for item in sets:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in ("model", "train"):
            raise VQGANLCError(f"--set {item!r}: expected model.KEY=VALUE or train.KEY=VALUE")
        cfg.setdefault(section, {})[name] = _yaml_value(value)
    return {"model": dict(cfg.get("model") or {}), "train": dict(cfg.get("train") or {})}


def run(ns: argparse.Namespace) -> int:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ..errors import VQGANLCError
    from ..generate.gpt import GPT
    from ..train.gpt import fit_gpt
    from .main import one_line

    parser = build_parser()
    args, extra = parser.parse_known_args(list(ns.rest))
    sets, unknown = split_overrides(extra)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are --model.FIELD VALUE or "
                     "--train.FIELD VALUE)")
    check_output(args.out, "folder")
    cfg = load_config(args.config, [*args.set, *sets])
    train = cfg["train"]
    for key in ("max_steps", "batch_size", "lr", "accelerator", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.devices is not None:
        train["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    if (args.tokens is None) == (args.images is None):
        parser.error("give --tokens DIR (encoded ids) or --images DIR --tokenizer DIR (tokenized online), one of them")
    if args.images is None and (args.tokenizer or args.prefix_tokenizer or args.file_list):
        parser.error("--tokenizer, --prefix-tokenizer and --file-list apply to --images only")
    if args.images is not None and (args.tokenizer is None or args.prefix_tokens):
        parser.error("--images needs --tokenizer (and --prefix-tokenizer, not --prefix-tokens, for a prefix)")
    if train.get("accelerator", "auto") not in ACCELERATORS:
        raise VQGANLCError(f"train.accelerator {train['accelerator']!r} is not one vqgan-lc trains on; choose one of: "
                           f"{', '.join(ACCELERATORS)}")
    try:
        out = fit_gpt(args.tokens, args.out, model=cfg["model"], train=train, prefix_tokens=args.prefix_tokens,
                      resume=args.resume, progress=not args.no_progress, images=args.images,
                      file_list=args.file_list, tokenizer=args.tokenizer, prefix_tokenizer=args.prefix_tokenizer)
    except ValueError as e:  # config values that do not fit the data
        raise VQGANLCError(str(e)) from e
    except MisconfigurationException as e:  # Lightning refused train.accelerator / devices / precision
        raise VQGANLCError(f"{one_line(str(e)).rstrip('.')} (from the train section); fix train.accelerator, "
                           "train.devices or train.precision") from e
    gpt = GPT.from_pretrained(out)
    c = gpt.config
    print(f"{out}: GPT {c.n_layer}x{c.n_embd} ({gpt.num_parameters() / 1e6:.2f}M parameters), {c.n_codes} codes, "
          f"{c.n_classes} classes{', prefix ' + str(c.prefix_len) if c.prefix_vocab else ''}; "
          f"{gpt.provenance.get('steps')} steps, final loss {gpt.provenance.get('final_loss')}")
    return 0
