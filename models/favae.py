"""FAVAE (Dehaene & Eline): a VAE that reconstructs the image and pretrained perceptual features.

The encoder maps a 128x128 image to a 100-d Gaussian latent; the decoder mirrors it with
transposed convolutions. Decoder activations at 64x64, 32x32 and 16x16 pass through 1x1 adapters
(1x1, ReLU, 1x1) and predict the frozen backbone's features at the same sizes; the last layer
predicts the pixels (sigmoid). Each prediction is a Gaussian with one trainable variance per
channel; the loss is the negative log-likelihood of pixels and features (each layer's per-pixel
log-probability summed over channels and upsampled to the image size) plus the KL term. Anomaly
map: that upsampled, summed negative log-likelihood; image score: its sum over the image (mean
here, the same ranking).

Texture protocol of the paper (``crop``): images of ``image_size`` px train on one random ``crop`` x
``crop`` patch each; scoring tiles the image into ``crop`` patches and stitches their maps (the paper
scores random crops; tiling covers every pixel once).

Deviations: the frozen VGG16 (conv2_2 / conv3_3 / conv4_3) is replaced by the offline ImageNet
EfficientNet-Lite0 stages of the same strides (stem 32 ch @ 1/2, block2 24 ch @ 1/4, block4 40 ch
@ 1/8) unless a VGG16 weights file is configured; ``widths`` scale the encoder / decoder channels
(paper: 128 / 256 / 512) so that a CPU config trains in minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import FrozenBackbone
from .base import AnomalyModel, ScoreOutput
from .score_maps import upsample_map


@dataclass
class FAVAEConfig:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 128
    latent: int = 100
    widths: tuple[int, int, int] = (128, 256, 512)
    bottleneck: int = 32
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    layers: tuple[str, ...] = ("stem", "block2", "block4")
    kl_weight: float = 1.0
    map_sigma: float = 4.0
    crop: int = 0  # texture protocol: train on random crops of this size, score tiles of it (0: whole image)

    def __post_init__(self) -> None:
        crop = self.crop or self.image_size
        if crop % 16 or self.image_size % crop:
            raise ValueError(f"crop ({crop}) must be a multiple of 16 that divides image_size ({self.image_size})")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, transposed: bool = False, act: bool = True) -> nn.Sequential:
    padding = (kernel - stride) // 2 if kernel > stride else 0
    layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, kernel, stride, padding)
    return nn.Sequential(layer, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)) if act else nn.Sequential(layer)


class FAVAE(AnomalyModel):
    name = "favae"

    def __init__(self, config: FAVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.crop = config.crop or config.image_size
        w1, w2, w3 = config.widths
        z = config.latent
        side = self.crop // 16  # the 8x8 bottleneck at 128 px
        self.encoder = nn.Sequential(
            _conv(3, w1, 4, 2), _conv(w1, w1, 4, 2), _conv(w1, w2, 3), _conv(w2, w2, 4, 2), _conv(w2, w3, 3),
            _conv(w3, w3, 4, 2), _conv(w3, w3, 3), _conv(w3, config.bottleneck, 3),
            nn.Conv2d(config.bottleneck, 2 * z, side))
        self.decoder_16 = nn.Sequential(  # latent -> 1/8 resolution, w3 channels
            _conv(z, config.bottleneck, side, side, transposed=True), _conv(config.bottleneck, w3, 3),
            _conv(w3, w3, 3), _conv(w3, w3, 4, 2, transposed=True))
        self.decoder_32 = nn.Sequential(_conv(w3, w2, 3), _conv(w2, w2, 4, 2, transposed=True))
        self.decoder_64 = nn.Sequential(_conv(w2, w1, 3), _conv(w1, w1, 4, 2, transposed=True))
        self.decoder_pixels = nn.Sequential(_conv(w1, 3, 4, 2, transposed=True, act=False), nn.Sigmoid())
        self.backbone = FrozenBackbone(config.backbone, config.layers, config.backbone_weights)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, channels, 1))
            for width, channels in zip((w1, w2, w3), self.backbone.channels))
        # one trainable log-variance per channel of each Gaussian (pixels, then each feature layer)
        self.log_variances = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in (3, *self.backbone.channels))

    def _decode(self, latent: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        d16 = self.decoder_16(latent[:, :, None, None])
        d32 = self.decoder_32(d16)
        d64 = self.decoder_64(d32)
        return self.decoder_pixels(d64), [d64, d32, d16]

    def _negative_log_likelihood_map(self, images: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """(N, H, W): pixel and feature NLL, each layer summed over channels, upsampled, summed."""
        pixels, decoded = self._decode(latent)
        targets = [images.float() / 255.0, *self.backbone(images)]
        predictions = [pixels, *(adapter(d) for adapter, d in zip(self.adapters, decoded))]
        total = torch.zeros(images.shape[0], self.crop, self.crop, device=images.device)
        for target, prediction, log_variance in zip(targets, predictions, self.log_variances):
            target, prediction = target.float(), prediction.float()  # the likelihood in fp32 under autocast
            if prediction.shape[-2:] != target.shape[-2:]:
                prediction = F.interpolate(prediction, size=target.shape[-2:], mode="bilinear", align_corners=False)
            variance = log_variance.view(1, -1, 1, 1)
            nll = 0.5 * ((target - prediction).pow(2) * torch.exp(-variance) + variance + math.log(2 * math.pi))
            total = total + upsample_map(nll.sum(1), self.crop)
        return total

    def _random_crops(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop == self.image_size:
            return images
        corners = torch.randint(0, self.image_size - self.crop + 1, (len(images), 2))
        return torch.stack([image[:, y:y + self.crop, x:x + self.crop] for image, (y, x) in zip(images, corners.tolist())])

    def training_loss(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        images = self._random_crops(windows[:, -1])
        mu, log_var = self.encoder(images.float() / 255.0).float().flatten(1).chunk(2, dim=1)
        latent = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        pixels = self.crop ** 2
        nll = self._negative_log_likelihood_map(images, latent).flatten(1).sum(1).mean() / pixels
        kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(1)).mean() / pixels
        return {"loss": nll + self.config.kl_weight * kl, "nll": nll, "kl": kl}

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        images = windows[:, -1]
        n, channels, size, tiles = images.shape[0], images.shape[1], self.image_size, self.image_size // self.crop
        crops = (images.reshape(n, channels, tiles, self.crop, tiles, self.crop).permute(0, 2, 4, 1, 3, 5)
                 .reshape(n * tiles * tiles, channels, self.crop, self.crop))
        mu, _ = self.encoder(crops.float() / 255.0).flatten(1).chunk(2, dim=1)
        maps = (self._negative_log_likelihood_map(crops, mu).reshape(n, tiles, tiles, self.crop, self.crop)
                .permute(0, 1, 3, 2, 4).reshape(n, size, size))
        if self.config.map_sigma > 0:
            maps = upsample_map(maps, self.image_size, self.config.map_sigma)
        return ScoreOutput(maps.flatten(1).mean(1), maps)
