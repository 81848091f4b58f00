"""Execute the README's ```python blocks verbatim, in order, in one namespace (``python tests/readme_runner.py
README FIXTURE``), in the current directory, with stand-ins for what the blocks download or expect to exist.

Run by ``tests/test_readme.py`` in a fresh process whose ``HF_ENDPOINT`` points at ``tests/hub_server.py``
serving the official-format golden fixture under the release registry's own repo and paths
(``wufuheng/VQ``, ``mbin/...``), so ``from_pretrained("vqgan-lc-f16-100k")`` runs huggingface_hub's real
client. The test-only part is here, before the blocks: the registry rows of the release are re-registered
with the fixture's architecture and exact sizes (the real rows expect 626 MB files), ``cat.jpg`` is a
scikit-image photograph, ``models/vqgan-lc-f16-100k`` is the fixture converted, ``TOKENS/`` is that
model's tokens of a few photographs, and the GPT release is a tiny minGPT-layout file over the fixture's codes. Prints one JSON line describing what the blocks produced.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
GPT_FILE = Path("gpt-lc-100K-f16.pth")
"""Written by ``prepare`` in the current directory; the test's loopback Hub serves it as the GPT release file."""


def python_blocks(readme: str) -> list[str]:
    """The README's ```python blocks, in order."""
    return FENCE.findall(readme)


def prepare(fixture: Path) -> None:
    import numpy as np
    import PIL.Image
    import skimage.data

    from vqgan_lc.convert import config_from_yaml, convert_official
    from vqgan_lc.releases import get_release, register_release
    from vqgan_lc.tokens import encode_dataset

    ckpt, cb = fixture / "vqgan_lc_official_format.pth", fixture / "codebook.pth"
    r = get_release("vqgan-lc-f16-100k")
    assert r.codebook is not None
    register_release(replace(
        r, preset=None, config=config_from_yaml(fixture / "vq_config.yaml"),
        checkpoint=replace(r.checkpoint, size=ckpt.stat().st_size, min_size=None, max_size=None),
        codebook=replace(r.codebook, size=cb.stat().st_size, min_size=None, max_size=None),
    ), overwrite=True)
    # the official GPT's stand-in: a tiny minGPT-layout file over the fixture's 1000 codes, 1000 classes, 16x16
    import torch
    from test_gpt_official import N_HEAD, mingpt_state

    gpt = get_release("vqgan-lc-gpt-f16-100k")
    torch.save(mingpt_state(seed=11, n_codes=1000, n_classes=1000, grid=(16, 16)), GPT_FILE)
    register_release(replace(gpt, checkpoint=replace(gpt.checkpoint, size=GPT_FILE.stat().st_size, min_size=None,
                                                     max_size=None), options={"n_head": N_HEAD, "n_codes": 1000}),
                     overwrite=True)
    PIL.Image.fromarray(skimage.data.chelsea()).save("cat.jpg")
    convert_official(ckpt, codebook=cb, yaml_config=fixture / "vq_config.yaml").save_pretrained("models/vqgan-lc-f16-100k")
    photos = Path("photos")
    photos.mkdir()
    for nm in ("astronaut", "coffee", "rocket"):
        PIL.Image.fromarray(np.ascontiguousarray(getattr(skimage.data, nm)()[..., :3])).save(photos / f"{nm}.png")
    encode_dataset("models/vqgan-lc-f16-100k", photos, "TOKENS", device="cpu", progress=False)


def describe(ns: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key, value in ns.items():
        if isinstance(value, torch.Tensor):
            out[key] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                        "min": float(value.min()), "max": float(value.max())}
    for key in ("tok", "tokens", "ds"):
        if key in ns:
            out[key + "_type"] = type(ns[key]).__name__
    if "out" in ns:
        out["sample_ids"] = list(ns["out"].ids.shape)
        out["sample_images"] = list(ns["out"].images.shape)
        out["sample_labels"] = ns["out"].labels.tolist()
    if "q" in ns:
        out["q_ids_shape"] = list(ns["q"].ids.shape)
    if "tokens" in ns:
        out["tokens_len"] = len(ns["tokens"])
        out["tokens_0_shape"] = list(ns["tokens"][0].shape)
    return out


def main() -> int:
    readme, fixture = Path(sys.argv[1]), Path(sys.argv[2])
    prepare(fixture)
    ns: dict[str, Any] = {"__name__": "__readme__"}
    blocks = python_blocks(readme.read_text())
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    print(json.dumps({"blocks": len(blocks), **describe(ns)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
