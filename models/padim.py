"""PaDiM-style baseline: a Gaussian per feature-map position on frozen pretrained features.

Defaults as the reference baseline of the still-image issue: EfficientNet-Lite0 blocks 4 and 10
(40 ch stride 8, 112 ch stride 16, the latter upsampled to the stride-8 grid), a mean and a
Ledoit-Wolf covariance per position fitted on normal training images, Mahalanobis distance as the
anomaly map. No gradient training: ``fit_statistics`` is its whole training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .backbones import FrozenBackbone
from .base import AnomalyModel, ScoreOutput
from .score_maps import max_box_mean, upsample_map


@dataclass
class PaDiMConfig:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 256
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    layers: tuple[str, ...] = ("block4", "block10")
    feature_stride: int = 8
    map_sigma: float = 4.0
    score_box: int = 1


class PaDiM(AnomalyModel):
    name = "padim"
    fits_statistics = True
    trains_by_gradient = False

    def __init__(self, config: PaDiMConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.backbone = FrozenBackbone(config.backbone, config.layers, config.backbone_weights)
        self.grid = config.image_size // config.feature_stride
        dims = sum(self.backbone.channels)
        positions = self.grid * self.grid
        self.register_buffer("mean", torch.zeros(positions, dims))
        self.register_buffer("precision", torch.zeros(positions, dims, dims))
        self.register_buffer("fitted", torch.tensor(False))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> (N, positions, dims)."""
        return self.backbone.tokens(images, self.grid)

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        from sklearn.covariance import ledoit_wolf

        embeddings = torch.cat([self.embed(windows[:, -1]) for windows in batches]).double().cpu().numpy()
        if len(embeddings) < 2:
            raise ValueError("PaDiM needs at least 2 training images")
        means = embeddings.mean(0)
        precisions = np.empty((embeddings.shape[1], embeddings.shape[2], embeddings.shape[2]))
        for position in range(embeddings.shape[1]):
            covariance, _ = ledoit_wolf(embeddings[:, position], assume_centered=False)
            precisions[position] = np.linalg.inv(covariance)
        self.mean.copy_(torch.from_numpy(means))
        self.precision.copy_(torch.from_numpy(precisions))
        self.fitted.fill_(True)

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        if not bool(self.fitted):
            raise RuntimeError("PaDiM scores only after fit_statistics (train it first)")
        centred = self.embed(windows[:, -1]) - self.mean
        distance = torch.einsum("npd,pde,npe->np", centred, self.precision, centred).clamp_min(0).sqrt()
        maps = upsample_map(distance.view(-1, self.grid, self.grid), self.image_size, self.config.map_sigma)
        return ScoreOutput(max_box_mean(maps, self.config.score_box), maps)
