"""Training and fine-tuning with PyTorch Lightning (the ``train`` extra): ``vqgan-lc train``.

- ``VQGANLCModule``: the tokenizer + PatchGAN + losses, manual two-optimizer step, schedules, usage.
- ``ImageDataModule``: an image folder or file list, official crops, unreadable files skipped.
- ``ReconstructionGrid``, ``ExportModel``, ``StepProgress``: callbacks; ``export_checkpoint``: ``.ckpt`` -> model directory.
"""

from .callbacks import ExportModel, ReconstructionGrid, StepProgress, reconstruction_grid
from .data import CollateImages, ImageDataModule, ImageFolderDataset
from .module import VQGANLCModule, export_checkpoint
from .schedule import lr_factor

__all__ = [
    "CollateImages",
    "ExportModel",
    "ImageDataModule",
    "ImageFolderDataset",
    "ReconstructionGrid",
    "StepProgress",
    "VQGANLCModule",
    "export_checkpoint",
    "lr_factor",
    "reconstruction_grid",
]
