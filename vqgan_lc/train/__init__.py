"""Training and fine-tuning with Lightning (the ``train`` extra): ``vqgan-lc train`` and ``vqgan-lc train-gpt``.

- ``VQGANLCModule``: the tokenizer + PatchGAN + losses, manual two-optimizer step, schedule, usage;
  its groups: ``vqgan_lc.build.ModelSpec``, ``LossConfig``, ``OptimConfig``.
- ``ImageDataModule``: an image folder or file list, official crops, unreadable files skipped.
- ``ReconstructionGrid``, ``ExportModel``, ``StepProgress``, ``PeriodicCheckpoint`` (``last.ckpt``): callbacks.
- ``lr_factor``: the one learning-rate schedule (also the GPT's).
- ``vqgan_lc.train.gpt``: the GPT prior's Lightning module, token dataset and ``fit_gpt``.
"""

from .callbacks import ExportModel, PeriodicCheckpoint, ReconstructionGrid, StepProgress, reconstruction_grid
from .config import LossConfig, OptimConfig
from .data import CollateImages, ImageDataModule, ImageFolderDataset
from .module import VQGANLCModule
from .schedule import lr_factor

__all__ = [
    "CollateImages",
    "ExportModel",
    "ImageDataModule",
    "PeriodicCheckpoint",
    "ImageFolderDataset",
    "LossConfig",
    "OptimConfig",
    "ReconstructionGrid",
    "StepProgress",
    "VQGANLCModule",
    "lr_factor",
    "reconstruction_grid",
]
