"""Synthetic anomaly masks for self-supervised detectors: thresholded Perlin noise (pure torch)."""

from __future__ import annotations

import math

import torch


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """2-D gradient (Perlin) noise of shape (height, width) with ``cells`` lattice cells per axis."""
    cy, cx = cells
    angles = 2 * math.pi * torch.rand(cy + 1, cx + 1, generator=generator)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)
    ys = torch.linspace(0, cy, height + 1)[:-1]
    xs = torch.linspace(0, cx, width + 1)[:-1]
    y0, x0 = ys.floor().long().clamp(max=cy - 1), xs.floor().long().clamp(max=cx - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    top = torch.lerp(corner(0, 0), corner(0, 1), fade(fx))
    bottom = torch.lerp(corner(1, 0), corner(1, 1), fade(fx))
    return math.sqrt(2) * torch.lerp(top, bottom, fade(fy))


def perlin_mask(size: int, threshold: float = 0.5, max_scale_power: int = 6,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """bool (size, size) blob mask: Perlin noise with 2^a x 2^b cells (a, b < ``max_scale_power``),
    turned by a random multiple of 90 degrees, thresholded. May be empty."""
    a, b = torch.randint(0, max_scale_power, (2,), generator=generator).tolist()
    noise = perlin_noise(size, size, (2 ** a, 2 ** b), generator)
    noise = torch.rot90(noise, int(torch.randint(0, 4, (1,), generator=generator)))
    return noise > threshold
