"""``vqgan-lc decode``: a token directory -> PNG images."""

from __future__ import annotations

import argparse
import logging

from ._args import positive_int
from ._checks import check_output

log = logging.getLogger(__name__)


def parse_indices(spec: str | None, n: int) -> range:
    """``"a:b"``, ``"a:"``, ``":b"`` or ``"i"`` -> a range of rows (Python slice semantics)."""
    if not spec:
        return range(n)
    if ":" in spec:
        a, b = spec.split(":", 1)
        return range(n)[slice(int(a) if a else None, int(b) if b else None)]
    i = int(spec)
    return range(n)[i : i + 1] if i >= 0 else range(n)[i : (i + 1) or None]


def indices(value: str) -> str:
    """An ``--indices`` value: ``a:b``, ``a:``, ``:b`` or ``i`` with integers (checked, kept as text)."""
    parts = value.split(":", 1)
    try:
        for part in parts:
            if part.strip() or len(parts) == 1:
                int(part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a row or a range such as 0:100, 5: or -1, got {value!r}") from None
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory that made the tokens")
    p.add_argument("--tokens", required=True, help="token directory written by `vqgan-lc encode`")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--indices", type=indices, help="rows to decode, e.g. 0:100, 5 or -1 (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--force", action="store_true", help="decode even if the model does not match the manifest")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..data import to_uint8
    from ..errors import VQGANLCError
    from ..tokenizer import DecodingTokenizer, load_tokenizer
    from ..tokens import TokenFormatError, check_compatible, open_tokens

    check_output(args.out, "folder")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_tokenizer(args.model, map_location=device)
    if not isinstance(model, DecodingTokenizer):
        raise VQGANLCError(f"{args.model} is a {model.kind} tokenizer, which has no pixel decoder; pass a VQGAN-LC "
                           "or MAGE VQGAN model")
    tokens = open_tokens(args.tokens)
    problems = check_compatible(tokens.manifest, model)
    if problems and not args.force:
        raise TokenFormatError(f"{args.tokens} was not made by this model ({'; '.join(problems)}); pass --force to decode anyway")
    for p in problems:
        log.warning("decoding despite: %s", p)
    rows = parse_indices(args.indices, len(tokens))
    if not rows:
        raise VQGANLCError(f"--indices {args.indices} selects none of the {len(tokens)} rows of {args.tokens}; pass "
                           f"rows from 0 to {len(tokens) - 1}" if len(tokens) else f"{args.tokens} holds no rows to decode")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(rows), args.batch_size):
        batch = list(rows[s : s + args.batch_size])
        ids = torch.from_numpy(tokens[batch].astype(np.int64)).to(device)
        images = to_uint8(model.decode(ids))
        for r, img in zip(batch, images.permute(0, 2, 3, 1).cpu().numpy()):
            Image.fromarray(img).save(out / f"{r:08d}.png")
    print(f"wrote {len(rows)} images to {out}")
    return 0
