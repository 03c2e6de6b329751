"""ADTR (anomaly detection transformer, 2022): reconstruct pretrained features with a transformer.

Multi-scale frozen backbone features are resized to one grid and concatenated, reduced by a 1x1
projection to ``hidden`` channels, encoded by a transformer encoder, and reconstructed by a decoder
whose input is a learned auxiliary query (one vector per token), not the encoder tokens, so it
cannot simply copy anomalies through. Learned position embeddings are added to queries and keys in
every attention. A 1x1 projection restores the feature channels; the loss is the mean over tokens
of the squared L2 feature difference on normal images. Anomaly map: channel L2 norm of the feature
difference, upsampled and smoothed; image score: max of the box-averaged map.

Deviation: the paper's frozen EfficientNet-B4 (layers 1-5, 720 ch) is replaced by the offline
ImageNet EfficientNet-Lite0 (blocks 2/4/7/10/14, 448 ch) unless a B4 weights file is configured.

Anomaly-available variant (ADTR+; used when a training config lists labelled anomalies): with
phi(u) = sqrt((mean_c |f - f^|)^2 + 1) - 1 per token, a normal image costs mean_u phi; an anomalous
image with a pixel mask y (share of each token inside the defect) costs
mean_u (1 - y) phi - alpha log(1 - exp(-mean_u y phi)), and one with only an image label costs
-alpha log(1 - exp(-q)), q = mean of its top-k phi. The log term pushes the reconstruction of
defects away from their features. Like the paper, it fine-tunes a normal-only model
(``train.init_checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbones import FrozenBackbone
from .base import AnomalyModel, LabelledAnomalies, ScoreOutput
from .score_maps import max_box_mean, upsample_map


@dataclass
class ADTRConfig:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 256
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    layers: tuple[str, ...] = ("block2", "block4", "block7", "block10", "block14")
    feature_stride: int = 16
    hidden: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    feedforward: int = 1024
    dropout: float = 0.1
    map_sigma: float = 4.0
    score_box: int = 16  # px at image_size
    anomaly_alpha: float = 0.003  # weight of the anomaly term (anomaly-available variant)
    anomaly_top_k: int = 20  # tokens averaged for an image-level label


class _AttentionLayer(nn.Module):
    """Post-norm attention + feed-forward; position embeddings added to queries and keys."""

    def __init__(self, hidden: int, heads: int, feedforward: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True) if cross else None
        self.feedforward = nn.Sequential(nn.Linear(hidden, feedforward), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(feedforward, hidden))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3 if cross else 2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, position: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        q = x + position
        x = self.norms[0](x + self.dropout(self.self_attention(q, q, x, need_weights=False)[0]))
        if self.cross_attention is not None:
            attended = self.cross_attention(x + position, memory + position, memory, need_weights=False)[0]
            x = self.norms[1](x + self.dropout(attended))
        return self.norms[-1](x + self.dropout(self.feedforward(x)))


class ADTR(AnomalyModel):
    name = "adtr"
    learns_from_anomalies = True

    def __init__(self, config: ADTRConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.backbone = FrozenBackbone(config.backbone, config.layers, config.backbone_weights)
        self.grid = config.image_size // config.feature_stride
        tokens = self.grid * self.grid
        channels = sum(self.backbone.channels)
        self.reduce = nn.Linear(channels, config.hidden)
        self.restore = nn.Linear(config.hidden, channels)
        self.position = nn.Parameter(torch.randn(1, tokens, config.hidden) * 0.02)
        self.query = nn.Parameter(torch.randn(1, tokens, config.hidden) * 0.02)
        layer = dict(hidden=config.hidden, heads=config.heads, feedforward=config.feedforward, dropout=config.dropout)
        self.encoder = nn.ModuleList(_AttentionLayer(**layer, cross=False) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(_AttentionLayer(**layer, cross=True) for _ in range(config.decoder_layers))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> target feature tokens (N, tokens, channels)."""
        return self.backbone.tokens(images, self.grid)

    def reconstruct(self, target: torch.Tensor) -> torch.Tensor:
        memory = self.reduce(target)
        for layer in self.encoder:
            memory = layer(memory, self.position)
        x = self.query.expand(target.shape[0], -1, -1)
        for layer in self.decoder:
            x = layer(x, self.position, memory)
        return self.restore(x)

    def training_loss(self, windows: torch.Tensor, anomalies: LabelledAnomalies | None = None) -> dict[str, torch.Tensor]:
        if anomalies is None:
            return {"loss": self._difference(windows[:, -1]).pow(2).sum(-1).mean()}
        images = torch.cat([windows[:, -1], anomalies.images])
        phi = torch.sqrt(self._difference(images).abs().mean(-1).pow(2) + 1) - 1  # (N, tokens)
        normal, anomalous = phi[:len(windows)], phi[len(windows):]
        labels = nn.functional.adaptive_avg_pool2d(anomalies.masks[:, None].float(), self.grid).flatten(1)
        pixel_push = _push_apart((labels * anomalous).mean(1))
        image_push = _push_apart(anomalous.topk(min(self.config.anomaly_top_k, phi.shape[1]), dim=1).values.mean(1))
        has_mask = anomalies.has_mask.float()
        normal_cost = torch.cat([normal.mean(1), ((1 - labels) * anomalous).mean(1) * has_mask])
        anomaly_cost = self.config.anomaly_alpha * (has_mask * pixel_push + (1 - has_mask) * image_push)
        loss = (normal_cost.sum() + anomaly_cost.sum()) / len(images)
        return {"loss": loss, "normal": normal.mean().detach(), "anomalous": anomalous.mean().detach()}

    def _difference(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction minus target features (N, tokens, channels), in fp32 also under autocast."""
        target = self.features(images)
        return self.reconstruct(target).float() - target.float()

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        distance = self._difference(windows[:, -1]).norm(dim=-1)
        maps = upsample_map(distance.view(-1, self.grid, self.grid), self.image_size, self.config.map_sigma)
        return ScoreOutput(max_box_mean(maps, self.config.score_box), maps)


def _push_apart(distance: torch.Tensor) -> torch.Tensor:
    """-log(1 - exp(-d)): large while the reconstruction of an anomaly stays close to its features."""
    return -torch.log(-torch.expm1(-distance.clamp_min(1e-6)))
