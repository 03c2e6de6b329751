"""Synthetic anomalies for self-supervised detectors (pure torch): thresholded Perlin noise masks
(DSR) and CutPaste / CutPaste-scar patches (DS2's CutPaste 3-way option)."""

from __future__ import annotations

import math

import torch
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

_JITTER = ColorJitter(0.1, 0.1, 0.1, 0.1)


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


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _paste(image: torch.Tensor, piece: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``piece`` (C, h, w) pasted where ``mask`` (h, w) is set, at a random place of ``image`` (C, H, W);
    returns the new image and the bool (H, W) mask of pasted pixels."""
    _, height, width = image.shape
    h, w = mask.shape
    top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
    out = image.clone()
    region = out[:, top:top + h, left:left + w]
    region[:] = torch.where(mask, piece, region)
    pasted = torch.zeros(height, width, dtype=torch.bool, device=image.device)
    pasted[top:top + h, left:left + w] = mask
    return out, pasted


def cut_paste(image: torch.Tensor, area: tuple[float, float] = (0.02, 0.15),
              aspect: tuple[float, float] = (0.3, 3.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: a rectangle of ``area`` x the image area, aspect ratio in (aspect[0], 1) or
    (1, aspect[1]) with equal chance, cut from a random place of the float [0, 1] image (C, H, W),
    colour-jittered and pasted at another. Returns the image and the pasted mask."""
    _, height, width = image.shape
    ratio = _uniform(aspect[0], 1.0) if torch.rand(()) < 0.5 else _uniform(1.0, aspect[1])
    size = _uniform(*area) * height * width
    h = min(height - 1, max(1, round(math.sqrt(size * ratio))))
    w = min(width - 1, max(1, round(math.sqrt(size / ratio))))
    top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
    piece = _JITTER(image[:, top:top + h, left:left + w])
    return _paste(image, piece, torch.ones(h, w, dtype=torch.bool, device=image.device))


def cut_paste_scar(image: torch.Tensor, width: tuple[int, int] = (1, 4), length: tuple[int, int] = (5, 6),
                   max_angle: float = 45.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-scar: a thin ``width`` x ``length`` px strip (sizes for a 64 px image, scaled with the
    image) cut, colour-jittered, turned by up to ``max_angle`` degrees and pasted elsewhere."""
    _, height, image_width = image.shape
    scale = height / 64
    w = max(1, round(int(torch.randint(width[0], width[1] + 1, ())) * scale))
    h = min(height - 1, max(2, round(int(torch.randint(length[0], length[1] + 1, ())) * scale)))
    top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, image_width - w + 1, ()))
    piece = _JITTER(image[:, top:top + h, left:left + w])
    angle = _uniform(-max_angle, max_angle)
    mask = TF.rotate(torch.ones(1, h, w, device=image.device), angle, expand=True)[0] > 0.5
    piece = TF.rotate(piece, angle, expand=True)
    return _paste(image, piece, mask)
