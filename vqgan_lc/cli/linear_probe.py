"""``vqgan-lc linear-probe``: linear-probe accuracy of a GPT's hidden states (DiGIT's measure).

::

    vqgan-lc linear-probe --gpt stage1/ --tokens tokens-digit-train/ --test-tokens tokens-digit-val/ --layer -4

Features are the mean-pooled outputs of block ``--layer`` (0-based, negative from the end) with the
null class as start token; a logistic-regression head is fit on the training rows and its accuracy on
the test rows (or a deterministic ``--test-fraction`` of ``--tokens``) is printed.

``--method paper`` runs DiGIT's protocol instead: one head per state (embedding output and blocks
0..n_layer-2 unless ``--layer`` names blocks; -1 there means the embedding output), trained jointly with
SGD (momentum 0.9, lr 0.4, cosine) for ``--steps`` updates (100k in the paper).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ._args import nonnegative_float, open_fraction, positive_float, positive_int, seed

if TYPE_CHECKING:
    from ..generate.gpt import GPT
    from ..train.gpt import GPTTokenDataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpt", required=True, help="GPT directory (train-gpt output)")
    p.add_argument("--tokens", required=True, help="labelled token directory (the probe's training rows)")
    p.add_argument("--test-tokens", help="labelled token directory of the test rows (default: split --tokens)")
    p.add_argument("--prefix-tokens", help="prefix token directory paired with --tokens (prefix GPTs)")
    p.add_argument("--test-prefix-tokens", help="prefix token directory paired with --test-tokens (prefix GPTs)")
    p.add_argument("--method", choices=("lbfgs", "paper"), default="lbfgs",
                   help="lbfgs: fast full-batch logistic regression per layer (default); paper: DiGIT's jointly "
                        "trained SGD heads")
    p.add_argument("--layer", type=int, nargs="+", default=None,
                   help="block(s) to probe (lbfgs default -1; paper default: embedding output and blocks 0..L-2)")
    p.add_argument("--steps", type=positive_int, default=1000, help="--method paper: SGD updates (paper: 100000)")
    p.add_argument("--lr", type=positive_float, default=0.4, help="--method paper: peak learning rate (paper 0.4)")
    p.add_argument("--train-batch-size", type=positive_int, default=256, help="--method paper: rows per SGD update")
    p.add_argument("--test-fraction", type=open_fraction, default=0.2)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--l2", type=nonnegative_float, default=1e-3, help="L2 weight of the linear head")
    p.add_argument("--batch-size", type=positive_int, default=64)


def check_gpt_fits(gpt: GPT, dataset: GPTTokenDataset, flag: str, gpt_dir: str) -> None:
    """Refuse a token directory whose grid or vocabulary is not the GPT's, in one sentence (instead of an
    error from inside the transformer)."""
    from ..errors import TokenFormatError

    tokens = dataset.tokens
    c = gpt.config
    if tuple(tokens.grid) != tuple(c.grid):
        raise TokenFormatError(
            f"{flag} {tokens.directory} holds {tokens.grid[0]}x{tokens.grid[1]} token grids but the GPT {gpt_dir} "
            f"was trained on {c.grid[0]}x{c.grid[1]} grids; encode the images at the GPT's image size "
            "(--image-size) or probe a GPT trained on these tokens")
    if tokens.codebook_size > c.n_codes:
        raise TokenFormatError(
            f"{flag} {tokens.directory} holds ids of a {tokens.codebook_size}-entry codebook but the GPT {gpt_dir} "
            f"models {c.n_codes} ids; probe with the tokens of the tokenizer the GPT was trained on")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import VQGANLCError
    from ..generate.gpt import GPT
    from ..generate.probe import linear_probe, paper_linear_probe
    from ..train.gpt import GPTTokenDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpt = GPT.from_pretrained(args.gpt, map_location=device)
    if args.test_tokens and bool(args.prefix_tokens) != bool(args.test_prefix_tokens):
        raise VQGANLCError("a prefix GPT probed with --test-tokens needs both --prefix-tokens and --test-prefix-tokens")
    train = GPTTokenDataset(args.tokens, args.prefix_tokens)
    test = GPTTokenDataset(args.test_tokens, args.test_prefix_tokens) if args.test_tokens else None
    for flag, ds in (("--tokens", train), ("--test-tokens", test)):
        if ds is not None:
            check_gpt_fits(gpt, ds, flag, args.gpt)
    if args.method == "paper":
        n = gpt.config.n_layer
        states = None if args.layer is None else [s if s == -1 else s % n for s in args.layer]
        try:
            pr = paper_linear_probe(gpt, train, states=states, test_dataset=test, test_fraction=args.test_fraction,
                                    seed=args.seed, steps=args.steps, lr=args.lr, batch_size=args.train_batch_size,
                                    feature_batch_size=args.batch_size)
        except ValueError as e:
            raise VQGANLCError(str(e)) from e
        for st, a, ta in zip(pr.states, pr.accuracies, pr.train_accuracies, strict=True):
            print(f"{'embedding' if st < 0 else f'block {st}'}: accuracy {a:.4f} (train {ta:.4f})")
        print(json.dumps({**pr.__dict__, "best_state": pr.best[0], "best_accuracy": pr.best[1]}))
        return 0
    results = []
    for layer in args.layer or [-1]:
        try:
            r = linear_probe(gpt, train, layer=layer, test_dataset=test, test_fraction=args.test_fraction,
                             seed=args.seed, l2=args.l2, batch_size=args.batch_size)
        except ValueError as e:
            raise VQGANLCError(str(e)) from e
        results.append(r.__dict__)
        print(f"block {r.layer}: accuracy {r.accuracy:.4f} (train {r.train_accuracy:.4f}; {r.n_train} train / "
              f"{r.n_test} test rows, {r.n_classes} classes)")
    print(json.dumps(results))
    return 0
