"""``vqgan-lc linear-probe``: linear-probe accuracy of a GPT's hidden states (DiGIT's measure).

::

    vqgan-lc linear-probe --gpt stage1/ --tokens tokens-digit-train/ --test-tokens tokens-digit-val/ --layer -4

Features are the mean-pooled outputs of block ``--layer`` (0-based, negative from the end) with the
null class as start token; a logistic-regression head is fit on the training rows and its accuracy on
the test rows (or a deterministic ``--test-fraction`` of ``--tokens``) is printed.
"""

from __future__ import annotations

import argparse
import json

from ._args import nonnegative_float, open_fraction, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpt", required=True, help="GPT directory (train-gpt output)")
    p.add_argument("--tokens", required=True, help="labelled token directory (the probe's training rows)")
    p.add_argument("--test-tokens", help="labelled token directory of the test rows (default: split --tokens)")
    p.add_argument("--prefix-tokens", help="prefix token directory paired with --tokens (prefix GPTs)")
    p.add_argument("--layer", type=int, nargs="+", default=[-1], help="block(s) to probe (default -1)")
    p.add_argument("--test-fraction", type=open_fraction, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l2", type=nonnegative_float, default=1e-3, help="L2 weight of the linear head")
    p.add_argument("--batch-size", type=positive_int, default=64)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import VQGANLCError
    from ..generate.gpt import GPT
    from ..generate.probe import linear_probe
    from ..train.gpt import GPTTokenDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpt = GPT.from_pretrained(args.gpt, map_location=device)
    train = GPTTokenDataset(args.tokens, args.prefix_tokens)
    test = GPTTokenDataset(args.test_tokens) if args.test_tokens else None
    results = []
    for layer in args.layer:
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
