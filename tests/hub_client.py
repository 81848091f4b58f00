"""Run ``vqgan_lc.hub`` in a fresh process (``python tests/hub_client.py SPEC_JSON``), so that the environment
(``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``) is set before huggingface_hub is imported.

SPEC: ``{"calls": [{"name": ..., "kwargs": {...}}, ...], "releases": [release rows to register],
"offline_flag": bool, "forbid_pickle": bool}`` (or one call as ``"name"``/``"kwargs"`` at the top level, or
``"cli": [argv]`` to run ``vqgan-lc`` with the rows registered; it prints ``{"rc": exit code}``). A release row is ``{"name", "repo", "checkpoint": {...}, "codebook": {...},
"yaml_config": path}`` with ``ReleaseFile`` fields, or for a GPT ``{"name", "repo", "kind": "gpt",
"checkpoint": {...}, "options": {...}, "tokenizer": name}``. Prints one JSON line per call: ``{"path": ...}``
or ``{"error": class name, "message": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _register(rows: list[dict[str, Any]]) -> None:
    from vqgan_lc.convert import config_from_yaml
    from vqgan_lc.releases import Release, ReleaseFile, register_release

    for row in rows:
        if row.get("kind") == "gpt":
            register_release(Release(  # a GPT row
                name=row["name"], kind="gpt", repo=row["repo"], preset=None, description="test GPT release",
                checkpoint=ReleaseFile(**row["checkpoint"]), codebook=None, tokenizer=row.get("tokenizer"),
                options=row.get("options", {}),
            ), overwrite=True)
            continue
        register_release(Release(
            name=row["name"], kind="vqgan-lc", repo=row["repo"], preset=None, description="test release",
            config=config_from_yaml(row["yaml_config"]), checkpoint=ReleaseFile(**row["checkpoint"]),
            codebook=ReleaseFile(**row["codebook"]),
        ), overwrite=True)


def _forbid_pickle() -> None:
    """Make reading or hashing an official pickle fail loudly: the converted copy must be enough."""
    import torch

    import vqgan_lc.convert
    import vqgan_lc.convert_gpt
    import vqgan_lc.hub

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the official pickle was read: {args[:1]}")

    torch.load = refuse  # type: ignore[assignment]
    vqgan_lc.convert.load_official_checkpoint = refuse  # type: ignore[assignment]
    vqgan_lc.convert_gpt.load_official_gpt_checkpoint = refuse  # type: ignore[assignment]
    vqgan_lc.hub.sha256_file = refuse  # type: ignore[assignment]


def main() -> int:
    spec = json.loads(sys.argv[1])
    from vqgan_lc.errors import VQGANLCError
    from vqgan_lc.hub import add_offline_argument, apply_offline_argument, resolve_pretrained

    if spec.get("offline_flag"):
        p = argparse.ArgumentParser()
        add_offline_argument(p)
        apply_offline_argument(p.parse_args(["--offline"]))
    _register(spec.get("releases", []))
    if spec.get("forbid_pickle"):
        _forbid_pickle()
    if "cli" in spec:  # a vqgan-lc command line, in this process (so the registered rows apply)
        from vqgan_lc.cli.main import main as cli

        print(json.dumps({"rc": cli(spec["cli"])}), flush=True)
        return 0
    for call in spec.get("calls") or [{"name": spec["name"], "kwargs": spec.get("kwargs", {})}]:
        try:
            out: dict[str, Any] = {"path": str(resolve_pretrained(call["name"], **call.get("kwargs", {})))}
        except VQGANLCError as e:
            out = {"error": type(e).__name__, "message": str(e)}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
