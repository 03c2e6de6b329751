"""Turning low-resolution anomaly maps into image-size maps and image scores (still-image models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import box_mean


def upsample_map(scores: torch.Tensor, size: int, sigma: float = 0.0) -> torch.Tensor:
    """(N, h, w) -> (N, size, size): bilinear upsampling, then a Gaussian blur of ``sigma`` px (0: none)."""
    maps = F.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        maps = gaussian_blur(maps, sigma)
    return maps[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 1, H, W) maps blurred by a Gaussian of ``sigma`` px, kernel 2 * round(4 sigma) + 1, reflected
    borders: torchvision's ``gaussian_blur`` as two 1-D convolutions with a kernel of fixed shape (its
    kernel takes its shape from the input, which an ONNX export with a dynamic batch cannot hold)."""
    half = int(4 * sigma + 0.5)
    offsets = torch.arange(-half, half + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, [half, half, half, half], mode="reflect")
    return F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))


def max_box_mean(maps: torch.Tensor, box: int) -> torch.Tensor:
    """Image score: the largest mean over ``box`` x ``box`` windows of (N, H, W) maps (box 1: the max)."""
    if box <= 1:
        return maps.flatten(1).amax(1)
    return box_mean(maps[:, None], box, box).flatten(1).amax(1)
