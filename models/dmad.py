"""DMAD (Diversity-Measurable Anomaly Detection, CVPR 2023), video variant with the PDM.

Frames t-4..t-1 are stacked along channels and predict frame t. An encoder compresses them into a
VQ memory (information compression); a decoder with positional (coordinate) channels predicts a
prototype frame; the pyramid deformation module estimates K=2 coarse-to-fine offset fields from the
input frames, which warp the prediction (and the foreground mask) with ``grid_sample``; a learnable
background template fills what the mask leaves out. Anomaly = reconstruction error after deformation
+ alpha * deformation magnitude.

Paper: W. Liu, H. Chang, B. Ma, S. Shan, X. Chen, "Diversity-Measurable Anomaly Detection", CVPR 2023,
sections 2.2-2.5 (VQ compression, PDM, foreground-background selection, training and inference).
Official code: github.com/FlappyPeggy/DMAD, ``DMAD-PDM/`` (Ped2 model, training and evaluation
scripts), which this follows where the paper is silent: 4 encoder stages with a bare last conv,
detached unquantised stage-3/4 skips into the decoder, tanh offsets of at most ``coarse_max_px`` /
``fine_max_px`` pixels, the Ped2 loss weights.

Where this departs from the paper:
- scoring: ``score="paper"`` is the paper's max box(A_rec) + alpha * max box(A_df);
  ``"official"`` is the official evaluation's three terms (vertical offset box, L1 reconstruction,
  gradient-difference box) weighted 0.2 / 0.4 / 0.6 on raw values; every term is stored either way;
- the background template is trained only by MSE to the frames, as in the official code, and
  initialised from the per-pixel median of the training frames instead of a shipped image;
- sizes (image size, widths, codebook) are constructor arguments so a CPU config can shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import AnomalyModel, ScoreOutput
from .blocks import (
    ConvBNReLU,
    CoordDoubleConv,
    DoubleConv,
    ResidualBlock,
    box_mean,
    coordinate_channels,
    image_gradients,
)
from .vector_quantizer import VectorQuantizer


@dataclass
class DMADConfig:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 256
    channels: int = 3
    input_frames: int = 4
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    memory_size: int = 200
    commitment: float = 0.25
    skip_channels: int = 32
    offset_width: int = 64
    coarse_stride: int = 4
    coarse_max_px: float = 2.0
    fine_max_px: float = 3.0
    background_lr_factor: float = 50.0
    # scoring: "paper" = max box(A_rec) + alpha * max box(A_df); "official" = 0.2a + 0.4b + 0.6c raw
    score: Literal["paper", "official"] = "paper"
    alpha: float = 1.0
    score_box: tuple[int, int] = (16, 14)  # (height, width) at 256 px, scaled with image_size
    offset_box: tuple[int, int] = (7, 18)


def _warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``image`` (N, C, H, W) sampled at ``grid`` (N, H, W, 2), in the grid's dtype (float32: under bf16
    autocast the image is cast up, never the sampling positions down)."""
    return F.grid_sample(image.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _offset_smoothness(offset: torch.Tensor, window: int) -> torch.Tensor:
    """L1 between each offset and the mean of its neighbours along x and along y."""
    pad = window // 2
    along_x = F.avg_pool2d(offset, (1, window), 1, (0, pad), count_include_pad=False)
    along_y = F.avg_pool2d(offset, (window, 1), 1, (pad, 0), count_include_pad=False)
    return (offset - along_x).abs().mean() + (offset - along_y).abs().mean()


def _gradient_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel gradient-difference map (N, 1, H, W) between two images."""
    ax, ay = image_gradients(a)
    bx, by = image_gradients(b)
    return ((ax - bx).abs() + (ay - by).abs()).mean(dim=1, keepdim=True)


class DMADEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stage1 = DoubleConv(in_channels, w1)
        self.stage2 = DoubleConv(w1, w2)
        self.stage3 = DoubleConv(w2, w3)
        self.stage4 = DoubleConv(w3, w4, bare_last=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(F.max_pool2d(f1, 2))
        f3 = self.stage3(F.max_pool2d(f2, 2))
        f4 = self.stage4(F.max_pool2d(f3, 2))
        return [f1, f2, f3, f4]


class DMADDecoder(nn.Module):
    """Memory + detached skips -> prototype frame in [-1, 1]."""

    def __init__(self, out_channels: int, widths: tuple[int, int, int, int], skip_channels: int) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.skip4 = nn.Conv2d(w4, skip_channels, 1)
        self.skip3 = nn.Conv2d(w3, skip_channels, 1)
        self.block4 = CoordDoubleConv(w4 + skip_channels, w4)
        self.up3 = nn.ConvTranspose2d(w4, w3, 2, 2)
        self.block3 = CoordDoubleConv(w3 + skip_channels, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, 2)
        self.block2 = CoordDoubleConv(w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, 2)
        self.head = nn.Sequential(ConvBNReLU(w1, w1), ConvBNReLU(w1, w1), nn.Conv2d(w1, out_channels, 3, 1, 1), nn.Tanh())

    def forward(self, memory: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x = self.block4(torch.cat([memory, self.skip4(f4.detach())], dim=1))
        x = self.block3(torch.cat([self.up3(x), self.skip3(f3.detach())], dim=1))
        x = self.block2(self.up2(x))
        return self.head(self.up1(x))


class PyramidDeformation(nn.Module):
    """Offset estimator: a coarse field at H/coarse_stride and a fine field at full resolution.

    Offsets are in ``grid_sample`` units (2/W per pixel), bounded by tanh to +-max_px pixels.
    """

    def __init__(self, in_channels: int, width: int, image_size: int, coarse_stride: int,
                 coarse_max_px: float, fine_max_px: float) -> None:
        super().__init__()
        downs = max(int(coarse_stride).bit_length() - 1, 0)
        self.stem = nn.Sequential(ConvBNReLU(in_channels + 4, width), ConvBNReLU(width, width))
        self.down = nn.Sequential(*[ConvBNReLU(width, width, stride=2) for _ in range(downs)], ResidualBlock(width))
        self.coarse_head = nn.Conv2d(width, 2, 3, 1, 1)
        self.fine_head = nn.Sequential(ConvBNReLU(2 * width, width), nn.Conv2d(width, 2, 3, 1, 1))
        for head in (self.coarse_head, self.fine_head[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.coarse_scale = 2.0 * coarse_max_px / image_size
        self.fine_scale = 2.0 * fine_max_px / image_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stem = self.stem(torch.cat([x, coordinate_channels(x)], dim=1))
        deep = self.down(stem)
        coarse = torch.tanh(self.coarse_head(deep)) * self.coarse_scale
        deep_up = F.interpolate(deep, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        fine = torch.tanh(self.fine_head(torch.cat([stem, deep_up], dim=1))) * self.fine_scale
        return coarse, fine


class ForegroundMask(nn.Module):
    """Sigmoid foreground mask from encoder stages 1-2."""

    def __init__(self, widths: tuple[int, int, int, int], out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(widths[0] + widths[1], widths[0]), nn.Conv2d(widths[0], out_channels, 3, 1, 1))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        f2_up = F.interpolate(f2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.body(torch.cat([f1, f2_up], dim=1)))


@dataclass
class DMADForward:
    coarse: torch.Tensor  # reconstruction after the coarse field
    final: torch.Tensor  # reconstruction after coarse then fine fields
    offset_coarse: torch.Tensor  # (N, 2, H/s, W/s) grid units
    offset_fine: torch.Tensor  # (N, 2, H, W) grid units
    fields: tuple[torch.Tensor, torch.Tensor]  # both fields upsampled to (N, 2, H, W)
    vq_loss: torch.Tensor


class DMAD(AnomalyModel):
    name = "dmad"
    term_weights = {"offset_vertical": 0.2, "reconstruction_l1": 0.4, "gradient_difference": 0.6}
    calibration_terms = {"gradient_excess": 1.0, "deformation": 1.0}
    # the offsets that become sampling grids, and the memory's distances (docs/backends.md: int8
    # offsets moved the deformation term by 61 % of its range)
    quantization_excluded = ("deformation", "memory")

    def __init__(self, config: DMADConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DMADConfig()
        if config.score not in ("paper", "official"):
            raise ValueError(f"dmad score must be 'paper' or 'official', got {config.score!r}")
        self.window_length = config.input_frames + 1
        self.channels = config.channels
        self.image_size = config.image_size
        in_channels = config.input_frames * config.channels
        self.encoder = DMADEncoder(in_channels, config.widths)
        self.memory = VectorQuantizer(config.memory_size, config.widths[3], config.commitment)
        self.decoder = DMADDecoder(config.channels, config.widths, config.skip_channels)
        self.deformation = PyramidDeformation(in_channels, config.offset_width, config.image_size,
                                              config.coarse_stride, config.coarse_max_px, config.fine_max_px)
        self.mask = ForegroundMask(config.widths, config.channels)
        self.background = nn.Parameter(torch.zeros(1, config.channels, config.image_size, config.image_size))
        # from a calibration, (H, W) each: the normal median and robust scale of the gradient
        # difference; buffers, so they go where the model goes, but not weights (not in state_dict)
        self.register_buffer("reference_gradient", None, persistent=False)
        self.register_buffer("reference_gradient_scale", None, persistent=False)
        size = config.image_size  # offsets are in [-1, 1] grid units; pixels per unit along x, y
        self.register_buffer("pixels_per_unit", torch.tensor([size / 2.0, size / 2.0]).view(1, 2, 1, 1),
                             persistent=False)

    def initialise_from_frames(self, frames: torch.Tensor) -> None:
        """Background template := per-pixel median of uint8 training frames (N, C, H, W)."""
        median = self.normalise(frames).median(dim=0, keepdim=True).values
        with torch.no_grad():
            self.background.copy_(median)

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        others = [p for n, p in self.named_parameters() if n != "background"]
        return [
            {"params": others, "lr": learning_rate},
            {"params": [self.background], "lr": learning_rate * self.config.background_lr_factor},
        ]

    def _split(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if windows.ndim != 5 or windows.shape[1] != self.window_length:
            raise ValueError(f"dmad expects windows (N, {self.window_length}, C, H, W), got {tuple(windows.shape)}")
        x = self.normalise(windows)
        n, t, c, h, w = x.shape
        return x[:, :-1].reshape(n, (t - 1) * c, h, w), x[:, -1]

    def forward(self, inputs: torch.Tensor) -> DMADForward:
        f1, f2, f3, f4 = self.encoder(inputs)
        memory, vq_loss, _ = self.memory(f4)
        prototype = self.decoder(memory, f3, f4)
        mask = self.mask(f1, f2)
        offset_coarse, offset_fine = self.deformation(inputs)
        size = prototype.shape[-2:]
        field_coarse = F.interpolate(offset_coarse, size=size, mode="bilinear", align_corners=True)
        background = self.background.detach()
        identity = self._identity_grid(prototype)
        grid = (identity + field_coarse.permute(0, 2, 3, 1)).clamp(-1, 1)
        warped, mask_warped = _warp(prototype, grid), _warp(mask, grid)
        coarse = warped * mask_warped + (1 - mask_warped) * background
        grid = (identity + offset_fine.permute(0, 2, 3, 1)).clamp(-1, 1)
        warped, mask_warped = _warp(warped, grid), _warp(mask_warped, grid)
        final = warped * mask_warped + (1 - mask_warped) * background
        return DMADForward(coarse, final, offset_coarse, offset_fine, (field_coarse, offset_fine), vq_loss)

    @staticmethod
    def _identity_grid(like: torch.Tensor) -> torch.Tensor:
        """The identity sampling grid (N, H, W, 2) of ``like`` (N, C, H, W), float32 whatever its dtype:
        in bf16 (a prototype under autocast) positions would round by up to 0.12 px at 128 px."""
        return coordinate_channels(like, torch.float32)[:, :2].permute(0, 2, 3, 1)

    def training_loss(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, target = self._split(windows)
        out = self.forward(inputs)
        terms = {
            "reconstruction": F.mse_loss(out.coarse, target) + F.mse_loss(out.final, target),
            "gradient": _gradient_difference(out.final, target).mean()
            + 0.25 * _gradient_difference(out.coarse, target).mean(),
            "compression": out.vq_loss,
            "deformation": 0.25 * (
                0.4 * out.offset_coarse.abs().mean()
                + 0.4 * out.offset_fine.abs().mean()
                + _offset_smoothness(out.offset_coarse, 7)
                + _offset_smoothness(out.offset_fine, 3)
            ),
            "background": F.mse_loss(self.background.expand_as(target), target),
        }
        terms["loss"] = sum(terms.values())
        return terms

    def _box(self, size: tuple[int, int]) -> tuple[int, int]:
        scale = self.image_size / 256.0
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    @torch.no_grad()
    def reference_maps(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``gradient_difference``: the per-pixel gradient-difference map (N, H, W) of the prediction."""
        inputs, target = self._split(windows)
        return {"gradient_difference": _gradient_difference(self.forward(inputs).final, target)[:, 0]}

    def set_reference(self, reference: dict[str, torch.Tensor]) -> None:
        unknown = set(reference) - {"gradient_difference", "gradient_difference_scale"}
        if unknown:
            raise ValueError(f"dmad takes the reference map gradient_difference (and its _scale), not "
                             f"{', '.join(sorted(unknown))}")
        self.reference_gradient = reference.get("gradient_difference")
        self.reference_gradient_scale = reference.get("gradient_difference_scale")

    @torch.no_grad()
    def score(self, windows: torch.Tensor) -> ScoreOutput:
        """Terms (N,) each: the official three, and for calibrated scores ``gradient_excess`` (the
        largest mean, over boxes twice the score box, of the gradient-difference map above its normal
        per-position median in units of its normal per-position robust scale: a z-map, so positions
        where normal motion keeps the error high weigh no more than quiet ones) and ``deformation``
        (largest box mean of the deformation magnitude)."""
        inputs, target = self._split(windows)
        out = self.forward(inputs)
        pixels_per_unit = self.pixels_per_unit
        a_rec = (out.final - target).abs().mean(dim=1, keepdim=True)
        a_df = sum((f * pixels_per_unit).norm(dim=1, keepdim=True) for f in out.fields)
        anomaly_map = a_rec + self.config.alpha * a_df
        box = self._box(self.config.score_box)
        deformation = box_mean(a_df, *box).amax(dim=(1, 2, 3))
        paper = box_mean(a_rec, *box).amax(dim=(1, 2, 3)) + self.config.alpha * deformation
        vertical = (out.fields[0][:, 1:2] * pixels_per_unit[:, 1:2]).abs()
        gradient = _gradient_difference(out.final, target)
        excess = gradient if self.reference_gradient is None else gradient - self.reference_gradient.to(gradient)
        if self.reference_gradient_scale is not None:
            excess = excess / self.reference_gradient_scale.to(gradient)
        terms = {
            "offset_vertical": box_mean(vertical, *self._box(self.config.offset_box)).amax(dim=(1, 2, 3)),
            "reconstruction_l1": a_rec.mean(dim=(1, 2, 3)),
            "gradient_difference": box_mean(gradient, *box).amax(dim=(1, 2, 3)),
            "gradient_excess": box_mean(excess, box[0] * 2, box[1] * 2).amax(dim=(1, 2, 3)),
            "deformation": deformation,
        }
        if self.config.score == "paper":
            score = paper
        else:
            score = sum(weight * terms[k] for k, weight in self.term_weights.items())
        return ScoreOutput(score=score, anomaly_map=anomaly_map[:, 0], terms=terms)
