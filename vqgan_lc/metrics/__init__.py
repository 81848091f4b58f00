"""Reconstruction metrics (PSNR, SSIM, LPIPS, rFID), codebook usage and the ``vqgan-lc evaluate`` pipeline.

Heavy parts (lpips, torchmetrics' Inception) are imported only when their metric is built.
"""

from ..quantize import CodebookUsage, usage_perplexity
from .evaluate import EvaluateError, EvaluateMode, EvaluateOptions, evaluate
from .fid import FID_IMPLEMENTATION, build_fid, read_inception_weights
from .image import PSNRChannel, psnr, rgb_to_y, ssim, to_unit
from .perceptual import LPIPSConvention, LPIPSMetric, LPIPSNet
from .report import computed, not_computed, write_report

__all__ = [
    "FID_IMPLEMENTATION",
    "CodebookUsage",
    "EvaluateError",
    "EvaluateMode",
    "EvaluateOptions",
    "LPIPSConvention",
    "LPIPSMetric",
    "LPIPSNet",
    "PSNRChannel",
    "build_fid",
    "computed",
    "evaluate",
    "not_computed",
    "psnr",
    "read_inception_weights",
    "rgb_to_y",
    "ssim",
    "to_unit",
    "usage_perplexity",
    "write_report",
]
