"""Small convolutional building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_channels(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Four positional channels (x, y, x*y, x^2+y^2) in [-1, 1] grid units for a (N, C, H, W) tensor,
    on its device, in ``dtype`` (default: its dtype)."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=dtype or x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=dtype or x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx, gy, gx * gy, (gx**2 + gy**2) / 2.0])
    return coords.unsqueeze(0).expand(n, -1, -1, -1)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU; with ``bare_last`` the second conv has no BN/ReLU (encoder output)."""

    def __init__(self, cin: int, cout: int, bare_last: bool = False) -> None:
        last: nn.Module = nn.Conv2d(cout, cout, 3, 1, 1) if bare_last else ConvBNReLU(cout, cout)
        super().__init__(ConvBNReLU(cin, cout), last)


class CoordDoubleConv(nn.Module):
    """DoubleConv whose input is concatenated with the positional channels (CoordConv)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = DoubleConv(cin + 4, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, coordinate_channels(x)], dim=1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def box_mean(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mean over every (height, width) box of a (N, 1, H, W) map (valid positions only)."""
    height = min(height, x.shape[-2])
    width = min(width, x.shape[-1])
    return F.avg_pool2d(x, (height, width), stride=1)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute horizontal and vertical differences, padded back to the input size."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs()
    return F.pad(dx, (0, 1, 0, 0)), F.pad(dy, (0, 0, 0, 1))


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) images each turned counter-clockwise by ``degrees[n]`` about its centre; corners zero."""
    radians = torch.deg2rad(degrees.float())
    cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotations(images: torch.Tensor, probability: float, max_degrees: float) -> torch.Tensor:
    """Each image turned w.p. ``probability`` by an angle ~ U(-max_degrees, max_degrees); the rest untouched."""
    chosen = torch.rand(len(images), device=images.device) < probability
    if not chosen.any():
        return images
    degrees = torch.empty(len(images), device=images.device).uniform_(-max_degrees, max_degrees)
    return torch.where(chosen[:, None, None, None], rotate(images, degrees), images)


def instance_norm_double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with instance norm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Encoder-decoder with skips, instance norm, ``levels`` resolutions from ``base`` channels:
    (N, cin, H, W) -> (N, cout, H, W) logits; H and W divisible by 2^(levels-1)."""

    def __init__(self, cin: int, cout: int, base: int = 64, levels: int = 4) -> None:
        super().__init__()
        block = instance_norm_double_conv
        widths = [base * 2 ** k for k in range(levels)]
        self.down = nn.ModuleList(block(a, b) for a, b in zip([cin, *widths[:-1]], widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(base, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(len(self.up))):
            x = self.merge[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)
