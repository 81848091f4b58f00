"""The shipped training recipes (YAML files in this folder), usable by name: ``--config tiny_cpu``.

``vqgan-lc train`` reads ``tiny_cpu``, ``vqgan_lc_f16_100k``, ``vqgan_lc_f8_100k``;
``vqgan-lc train-gpt`` reads ``gpt_tiny_cpu``, ``gpt_vqgan_lc_404m``, ``gpt_digit_stage{1,2}_base``, ``gpt_digit_stage2_nar_{tiny,base}``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent


def list_configs() -> list[str]:
    """Names of the shipped configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """An existing YAML file, or the shipped config of that name (``tiny_cpu`` or ``tiny_cpu.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = CONFIG_DIR / f"{name}.yaml"
    if path.parent in (Path("."), Path("configs")) and shipped.is_file():  # also the old configs/NAME.yaml
        return shipped
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a shipped config; give a YAML path or "
                      f"one of: {', '.join(list_configs())}")


__all__ = ["CONFIG_DIR", "config_path", "list_configs"]
