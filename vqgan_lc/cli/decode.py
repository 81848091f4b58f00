"""``vqgan-lc decode``: a token directory -> PNG images."""

from __future__ import annotations

import argparse
import logging

from ._args import positive_int
from ._checks import check_output

log = logging.getLogger(__name__)

DECODED_NAMES = (r"\d{8,}\.png",)
"""What decode writes into --out: one ``{row:08d}.png`` per row."""


def parse_indices(spec: str | None, n: int) -> range:
    """``"a:b"``, ``"a:"``, ``":b"`` or ``"i"`` -> a range of rows (Python slice semantics).

    ``ConfigError`` when ``spec`` is not of that form or selects no row of the ``n``.
    """
    from ..errors import ConfigError

    if not spec:
        rows = range(n)
    else:
        try:
            if ":" in spec:
                a, b = spec.split(":", 1)
                rows = range(n)[slice(int(a) if a.strip() else None, int(b) if b.strip() else None)]
            else:
                i = int(spec)
                rows = range(n)[i : i + 1] if i >= 0 else range(n)[i : (i + 1) or None]
        except ValueError:
            raise ConfigError(f"--indices {spec!r} is not a row range; write e.g. 0:100, 5: or 7") from None
    if not rows:
        raise ConfigError(f"--indices {spec!r} selects none of the {n} rows; choose rows in 0:{n}" if spec
                          else "the token directory has no rows to decode; check --tokens")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory that made the tokens")
    p.add_argument("--tokens", required=True, help="token directory written by `vqgan-lc encode`")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--indices", help="rows to decode, e.g. 0:100, 5 or -1 (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--force", action="store_true", help="decode even if the model does not match the manifest")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds other files (kept) or an earlier decode (removed first)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from .._io import prepare_output_dir
    from ..data import to_uint8
    from ..errors import ConfigError, VQGANLCError
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
    out = Path(args.out)
    if args.batch_size < 1:  # argparse refuses it; a Namespace built by hand may not
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    prepare_output_dir(out, "folder of decoded images", overwrite=args.overwrite, own_names=DECODED_NAMES)
    written = 0
    for s in range(0, len(rows), args.batch_size):
        batch = list(rows[s : s + args.batch_size])
        ids = torch.from_numpy(tokens[batch].astype(np.int64)).to(device)
        images = to_uint8(model.decode(ids))
        for r, img in zip(batch, images.permute(0, 2, 3, 1).cpu().numpy()):
            Image.fromarray(img).save(out / f"{r:08d}.png")
            written += 1
    print(f"wrote {written} images to {out}")
    return 0
