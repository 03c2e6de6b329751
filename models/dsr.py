"""DSR (ECCV'22): a dual subspace re-projection network for surface anomaly detection.

Stage 1 (``stage: discrete``): a two-level VQ-VAE (EMA codebooks) learns a quantised subspace of
natural images and a general appearance decoder: L = ||I - I_gen||^2 + commitment terms. Its result
is reusable across categories (``stage1_checkpoint``, ``anomstream train --stage1 PATH``).

Stages 2 + 3 (``stage: detection``, on the category's normal images; the stage-1 parts frozen; as the
official code, 40 % of training images are turned by an angle ~ U(-90, 90) degrees, corners black):
- stage 2 (the first ``stage2_fraction`` of training): anomalies are generated in feature space -
  inside a Perlin mask (max-pooled to the level's grid) each quantised vector is replaced by a
  codeword drawn uniformly among those ranked [5 %, s K) by distance to the unquantised feature,
  s ~ U(0.2, 1); 50 % both levels, 25 % low only, 25 % high only; 50 % of images get no anomaly.
  A subspace-restriction network per level (instance-norm conv encoder-decoder) maps the anomalous
  codes back towards the normal ones (re-quantised by the frozen codebook); an object-specific
  decoder reconstructs I_spc; a U-Net on (I_spc, I_gen) segments the anomaly. Loss (eq. 3):
  focal(M, M_gt) + lambda2 * ||F~ - Q||^2 + lambda3 * ||I - I_spc||^2 (lambda2 1, lambda3 10).
- stage 3 (the rest, with a learning-rate schedule of its own, as the paper trains it separately): an
  upsampling U-Net on (I_spc, I_gen, softmax M) learns full-resolution masks from image-space smudges (a
  Perlin region blended with a flat colour), focal loss only.
Scores: image = max of the ``score_box`` mean-filtered stage-2 anomaly probability; pixel map =
the stage-3 probability.

Deviations (sizes are config): the stage-1 model trains on the natural images the user gives (no
ImageNet here); the object-specific decoder has the general decoder's shape; CPU configs shrink widths
and codebooks; stage 1 restarts codewords used less than ``dead_code_threshold`` times per batch at encoder
outputs (its training code is not published; without restarts the EMA codebook collapsed to 5 of 512
codes here, see docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import AnomalyModel, ScoreOutput
from .blocks import UNet, instance_norm_double_conv, random_rotations
from .errors import EarlierStageError
from .score_maps import max_box_mean
from .synthetic_anomalies import perlin_mask
from .vector_quantizer import EMAVectorQuantizer


@dataclass
class DSRConfig:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 256
    stage: Literal["discrete", "detection"] = "detection"
    stage1_checkpoint: str | None = None
    hidden: int = 128
    embedding_dim: int = 128
    codebook_size: int = 4096
    commitment: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0  # stage 1: restart codewords used less than once per batch (0: never)
    restriction_widths: tuple[int, int, int] = (128, 256, 512)
    detection_base: int = 64
    upsampling_base: int = 64
    stage2_fraction: float = 0.7
    rotation_probability: float = 0.4  # detection stages: input turned by U(-90, 90) degrees, corners black
    rotation_degrees: float = 90.0
    strength: tuple[float, float] = (0.2, 1.0)
    skip_nearest: float = 0.05
    focal_gamma: float = 2.0
    subspace_weight: float = 1.0
    reconstruction_weight: float = 10.0
    score_box: int = 21  # px at 256, scaled with image_size


class _ResidualStack(nn.Sequential):
    def __init__(self, channels: int, layers: int = 2) -> None:
        super().__init__(*(nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels // 2, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(channels // 2, channels, 1)) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = x + layer(x)
        return F.relu(x)


class _Decoder(nn.Module):
    """(Q_lo at H/8, Q_hi at H/4) -> image (N, 3, H, W), linear output."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_lo = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.body = nn.Sequential(nn.Conv2d(2 * dim, hidden, 3, padding=1), _ResidualStack(hidden),
                                  nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1), nn.ReLU(),
                                  nn.ConvTranspose2d(hidden // 2, 3, 4, stride=2, padding=1))

    def forward(self, q_lo: torch.Tensor, q_hi: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([self.up_lo(q_lo), q_hi], dim=1))


class DiscreteModel(nn.Module):
    """Stage 1: two-level quantised encoder + general appearance decoder."""

    def __init__(self, config: DSRConfig) -> None:
        super().__init__()
        h, d = config.hidden, config.embedding_dim
        self.encoder_hi = nn.Sequential(nn.Conv2d(3, h // 2, 4, 2, 1), nn.ReLU(), nn.Conv2d(h // 2, h, 4, 2, 1), nn.ReLU(),
                                        nn.Conv2d(h, h, 3, padding=1), _ResidualStack(h))
        self.encoder_lo = nn.Sequential(nn.Conv2d(h, h, 4, 2, 1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1),
                                        _ResidualStack(h), nn.Conv2d(h, d, 1))
        self.quantise_lo = EMAVectorQuantizer(config.codebook_size, d, config.commitment, config.ema_decay,
                                              dead_code_threshold=config.dead_code_threshold)
        self.up_lo = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        self.pre_hi = nn.Conv2d(h + d, d, 1)
        self.quantise_hi = EMAVectorQuantizer(config.codebook_size, d, config.commitment, config.ema_decay,
                                              dead_code_threshold=config.dead_code_threshold)
        self.decoder = _Decoder(d, h)

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images in [0, 1] -> unquantised features f_*, codes q_* and the commitment loss."""
        hi = self.encoder_hi(images)
        f_lo = self.encoder_lo(hi)
        q_lo, loss_lo, _ = self.quantise_lo(f_lo)
        f_hi = self.pre_hi(torch.cat([hi, self.up_lo(q_lo)], dim=1))
        q_hi, loss_hi, _ = self.quantise_hi(f_hi)
        return {"f_lo": f_lo, "q_lo": q_lo, "f_hi": f_hi, "q_hi": q_hi, "vq_loss": loss_lo + loss_hi}


class _SubspaceRestriction(nn.Module):
    def __init__(self, dim: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        block = instance_norm_double_conv
        w1, w2, w3 = widths
        self.net = nn.Sequential(block(dim, w1), nn.MaxPool2d(2), block(w1, w2), nn.MaxPool2d(2), block(w2, w3),
                                 nn.Upsample(scale_factor=2), block(w3, w2), nn.Upsample(scale_factor=2), block(w2, w1),
                                 nn.Conv2d(w1, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Two-class focal loss of (N, 2, H, W) logits against a (N, 1, H, W) 0/1 mask."""
    probability = logits.softmax(1)
    p_true = torch.where(target[:, 0] > 0.5, probability[:, 1], probability[:, 0]).clamp(1e-5, 1.0)
    return (-(1 - p_true) ** gamma * p_true.log()).mean()


class DSR(AnomalyModel):
    name = "dsr"
    quantization_excluded = ("quantise_lo", "quantise_hi")  # codebook look-ups stay in float

    def __init__(self, config: DSRConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.discrete = DiscreteModel(config)
        d = config.embedding_dim
        self.restrict_lo = _SubspaceRestriction(d, config.restriction_widths)
        self.restrict_hi = _SubspaceRestriction(d, config.restriction_widths)
        self.object_decoder = _Decoder(d, config.hidden)
        self.detection = UNet(6, 2, config.detection_base, levels=4)
        self.upsampling = UNet(8, 2, config.upsampling_base, levels=3)
        self.register_buffer("progress", torch.tensor(0.0))
        if config.stage == "detection":
            for parameter in self.discrete.parameters():
                parameter.requires_grad_(False)
        else:
            for module in (self.restrict_lo, self.restrict_hi, self.object_decoder, self.detection, self.upsampling):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> DSR:
        super().train(mode)
        if self.config.stage == "detection":
            self.discrete.eval()  # frozen stage-1 subspace: no codebook updates
        return self

    def builds_on(self) -> str | None:
        """Detection stage: the stage-1 checkpoint (the VQ-VAE trained on natural images)."""
        if self.config.stage != "detection":
            return None
        if not self.config.stage1_checkpoint:
            raise EarlierStageError("dsr detection stage needs stage1_checkpoint (anomstream train --stage1 PATH)")
        return self.config.stage1_checkpoint

    def start_from(self, checkpoint: dict) -> None:
        path = self.config.stage1_checkpoint
        if checkpoint.get("params", {}).get("stage") != "discrete":
            raise EarlierStageError(f"{path}: not a DSR stage-1 (stage: discrete) checkpoint")
        state = {k[len("discrete."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("discrete.")}
        try:
            self.discrete.load_state_dict(state)
        except RuntimeError as error:
            raise EarlierStageError(f"{path}: stage-1 weights do not fit this DSR config: {str(error).splitlines()[0]}") from None

    @property
    def training_phases(self) -> tuple[float, ...]:
        """Stage 3 (the upsampling module, trained from scratch) gets a learning-rate schedule of its own."""
        return (self.config.stage2_fraction,) if self.config.stage == "detection" else ()

    def after_optimizer_step(self, progress: float) -> None:
        self.progress.fill_(progress)

    # --- anomaly generation ---------------------------------------------------------------------
    def _masks(self, count: int, device: torch.device) -> torch.Tensor:
        """(N, 1, S, S) float Perlin masks, half of them empty."""
        masks = torch.zeros(count, 1, self.image_size, self.image_size, device=device)
        for index in range(count):
            if torch.rand(()) < 0.5:
                masks[index, 0] = perlin_mask(self.image_size).float()
        return masks

    def _replace_codes(self, features: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                       quantiser: EMAVectorQuantizer) -> torch.Tensor:
        """Inside ``mask`` (N, 1, h, w) swap each code for a codeword ranked in [skip, s*K) by distance."""
        selected = mask[:, 0] > 0
        if not selected.any():
            return codes
        codebook = quantiser.codebook
        size = len(codebook)
        ranks = quantiser.squared_distances(features.permute(0, 2, 3, 1)[selected]).argsort(dim=1)
        strength = torch.empty(len(features), device=features.device).uniform_(*self.config.strength)
        upper = (strength * size).long().clamp(min=int(self.config.skip_nearest * size) + 1)
        upper = upper[:, None, None].expand_as(selected)[selected]
        lower = int(self.config.skip_nearest * size)
        pick = lower + (torch.rand(len(ranks), device=ranks.device) * (upper - lower)).long()
        replaced = codes.permute(0, 2, 3, 1).clone()
        replaced[selected] = codebook[ranks.gather(1, pick[:, None])[:, 0]]
        return replaced.permute(0, 3, 1, 2)

    def _feature_anomalies(self, encoded: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(encoded["q_lo"])
        masks = self._masks(n, encoded["q_lo"].device)
        choice = torch.rand(n, device=masks.device)
        use_lo = (choice < 0.75)[:, None, None, None].float()  # 50 % both, 25 % low, 25 % high
        use_hi = (choice >= 0.25)[:, None, None, None].float()
        mask_lo = F.adaptive_max_pool2d(masks, encoded["q_lo"].shape[-2:]) * use_lo
        mask_hi = F.adaptive_max_pool2d(masks, encoded["q_hi"].shape[-2:]) * use_hi
        q_lo = self._replace_codes(encoded["f_lo"], encoded["q_lo"], mask_lo, self.discrete.quantise_lo)
        q_hi = self._replace_codes(encoded["f_hi"], encoded["q_hi"], mask_hi, self.discrete.quantise_hi)
        size = (self.image_size, self.image_size)
        truth = torch.maximum(F.interpolate(mask_lo, size=size, mode="nearest"),
                              F.interpolate(mask_hi, size=size, mode="nearest"))
        return q_lo, q_hi, truth

    def _image_smudges(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = self._masks(len(images), images.device)
        colour = torch.rand(len(images), 3, 1, 1, device=images.device)
        keep = torch.rand(len(images), 1, 1, 1, device=images.device) * 0.8
        return masks * (keep * images + (1 - keep) * colour) + (1 - masks) * images, masks

    # --- forward parts ----------------------------------------------------------------------------
    def _specific(self, q_lo: torch.Tensor, q_hi: torch.Tensor) -> dict[str, torch.Tensor]:
        restricted_lo, restricted_hi = self.restrict_lo(q_lo), self.restrict_hi(q_hi)
        requantised_lo, _, _ = self.discrete.quantise_lo(restricted_lo)
        requantised_hi, _, _ = self.discrete.quantise_hi(restricted_hi)
        return {"restricted_lo": restricted_lo, "restricted_hi": restricted_hi,
                "image": self.object_decoder(requantised_lo, requantised_hi)}

    def _detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(I_spc, I_gen, stage-2 logits) of un-altered codes."""
        encoded = self.discrete.encode(images)
        general = self.discrete.decoder(encoded["q_lo"], encoded["q_hi"])
        specific = self._specific(encoded["q_lo"], encoded["q_hi"])["image"]
        return specific, general, self.detection(torch.cat([specific, general], dim=1))

    def training_loss(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        images = windows[:, -1].float() / 255.0
        if self.config.stage == "discrete":
            encoded = self.discrete.encode(images)
            reconstruction = F.mse_loss(self.discrete.decoder(encoded["q_lo"], encoded["q_hi"]), images)
            return {"loss": reconstruction + encoded["vq_loss"], "reconstruction": reconstruction,
                    "codes_in_use_lo": torch.tensor(float(self.discrete.quantise_lo.codes_in_use())),
                    "codes_in_use_hi": torch.tensor(float(self.discrete.quantise_hi.codes_in_use()))}
        images = random_rotations(images, self.config.rotation_probability, self.config.rotation_degrees)
        if float(self.progress) < self.config.stage2_fraction:
            return self._stage2_loss(images)
        smudged, truth = self._image_smudges(images)
        with torch.no_grad():
            specific, general, logits = self._detect(smudged)
        upsampled = self.upsampling(torch.cat([specific, general, logits.softmax(1)], dim=1))
        focal = focal_loss(upsampled, truth, self.config.focal_gamma)
        return {"loss": focal, "upsampling_focal": focal}

    def _stage2_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            encoded = self.discrete.encode(images)
            q_lo, q_hi, truth = self._feature_anomalies(encoded)
            general = self.discrete.decoder(q_lo, q_hi)
        specific = self._specific(q_lo, q_hi)
        logits = self.detection(torch.cat([specific["image"], general], dim=1).detach())
        focal = focal_loss(logits, truth, self.config.focal_gamma)
        subspace = F.mse_loss(specific["restricted_lo"], encoded["q_lo"]) + F.mse_loss(specific["restricted_hi"], encoded["q_hi"])
        reconstruction = F.mse_loss(specific["image"], images)
        loss = focal + self.config.subspace_weight * subspace + self.config.reconstruction_weight * reconstruction
        return {"loss": loss, "focal": focal, "subspace": subspace, "reconstruction": reconstruction}

    @property
    def scores_anomalies(self) -> bool:
        return self.config.stage == "detection"

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        if self.config.stage != "detection":
            raise RuntimeError("a DSR stage-1 (discrete) model does not score anomalies; train the detection stage")
        images = windows[:, -1].float() / 255.0
        specific, general, logits = self._detect(images)
        probability = logits.softmax(1)
        box = max(1, round(self.config.score_box * self.image_size / 256)) | 1
        smoothed = F.avg_pool2d(probability[:, 1:], box, stride=1, padding=box // 2, count_include_pad=False)[:, 0]
        pixel = self.upsampling(torch.cat([specific, general, probability], dim=1)).softmax(1)[:, 1]
        return ScoreOutput(max_box_mean(smoothed, 1), pixel)
