"""Turning low-resolution anomaly maps into image-size maps and image scores (still-image models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from models.blocks import box_mean


def upsample_map(scores: torch.Tensor, size: int, sigma: float = 0.0) -> torch.Tensor:
    """(N, h, w) -> (N, size, size): bilinear upsampling, then a Gaussian blur of ``sigma`` px (0: none)."""
    maps = F.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = 2 * int(4 * sigma + 0.5) + 1
        maps = gaussian_blur(maps, [kernel, kernel], [sigma, sigma])
    return maps[:, 0]


def max_box_mean(maps: torch.Tensor, box: int) -> torch.Tensor:
    """Image score: the largest mean over ``box`` x ``box`` windows of (N, H, W) maps (box 1: the max)."""
    if box <= 1:
        return maps.flatten(1).amax(1)
    return box_mean(maps[:, None], box, box).flatten(1).amax(1)
