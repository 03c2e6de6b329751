"""DS2 (WACV'24): dense self-supervised pretraining of a ResNet-18 from scratch, then a Gaussian
density of patch embeddings for image and pixel anomaly scores.

Pretraining (``training_loss``): two augmented views of each normal image (random resized crop with
its box kept, horizontal flip, colour jitter, Gaussian blur). Online branch: backbone -> per-scale
projector (1x1 conv, BN, ReLU, 1x1 conv) on c4 and c5 -> pixel propagation (PixPro: similarity
max(cos, 0)^2 weighted sum of a 1x1 value transform), L2-normalised; target branch: a momentum (EMA)
copy of backbone + projectors, momentum rising from ``momentum`` to 1 on a cosine. Positive pairs:
feature-map bins of the two views whose centres, in image coordinates, lie closer than ``delta`` x
the larger bin diagonal, plus one top-1 pair per image by backbone cosine. Loss per scale:
-2 x mean cosine over positive pairs, symmetrised; c4 + c5.

Detector (``fit_statistics`` / ``score``): ``patch`` x ``patch`` patches every ``patch_stride``
pixels -> backbone -> spatial mean of c5 -> L2 norm -> PCA -> one Gaussian for all patches (mean,
Ledoit-Wolf precision) -> Mahalanobis distance. Pixel map: each patch score spread by a transposed
convolution with a ``patch`` x ``patch`` Gaussian (sigma ``map_sigma``), no overlap normalisation;
image score: the largest patch score.

Deviations for 2 CPU cores (config sizes, not code): views of ``view_size`` px (paper 224), a smaller
projector (paper 4096 hidden), AdamW in place of LARS (the one training loop), patch stride 16
(paper 4). Pretraining and detector use the same ImageNet normalisation (the released evaluation
feeds un-normalised images).

``pretraining: cutpaste3way`` (the supplementary's self-supervised alternative): the same ResNet-18
with its pooled c5 and an MLP head (512-512-128-3, BN + ReLU) learns to tell apart a random
``cutpaste_patch`` crop of each image, the crop with a CutPaste rectangle and the crop with a
CutPaste scar (3-way cross entropy); the detector on top is unchanged. Deviation: AdamW with the
loop's cosine in place of SGD 0.03.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import transforms

from .backbones import imagenet_normalise
from .base import AnomalyModel, ScoreOutput
from .synthetic_anomalies import cut_paste, cut_paste_scar


@dataclass
class DS2Config:
    __pydantic_config__ = {"extra": "forbid"}

    image_size: int = 256
    pretraining: Literal["dense", "cutpaste3way"] = "dense"
    cutpaste_patch: int = 64  # crop size of the CutPaste 3-way task (paper: 64 px of 256 px images)
    view_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    projector_hidden: int = 4096
    projector_out: int = 256
    momentum: float = 0.99
    delta: float = 0.1
    patch: int = 32
    patch_stride: int = 4
    pca_dims: int = 500
    map_sigma: float = 10.0
    embed_batch: int = 1024  # patches per backbone call when embedding

    def __post_init__(self) -> None:
        if not 0 < self.cutpaste_patch <= self.image_size:
            raise ValueError(f"cutpaste_patch must be in 1..image_size ({self.image_size}), got {self.cutpaste_patch}")


def _projector(channels: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, out, 1))


class _ResNet18Stages(nn.Module):
    """Randomly initialised ResNet-18 returning c4 (256 ch, stride 16) and c5 (512 ch, stride 32)."""

    def __init__(self) -> None:
        super().__init__()
        network = torchvision.models.resnet18(weights=None)
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool, network.layer1, network.layer2)
        self.layer3, self.layer4 = network.layer3, network.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c4 = self.layer3(self.stem(x))
        return c4, self.layer4(c4)


class _PixelPropagation(nn.Module):
    def __init__(self, channels: int, gamma: float = 2.0) -> None:
        super().__init__()
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = F.normalize(x.flatten(2), dim=1)
        similarity = torch.einsum("ncp,ncq->npq", flat, flat).clamp_min(0).pow(self.gamma)
        values = self.value(x).flatten(2)
        return torch.einsum("npq,ncq->ncp", similarity, values).view_as(x)


class DS2(AnomalyModel):
    name = "ds2"
    fits_statistics = True

    def __init__(self, config: DS2Config) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.backbone = _ResNet18Stages()
        if config.pretraining == "dense":
            self.projectors = nn.ModuleList(_projector(c, config.projector_hidden, config.projector_out) for c in (256, 512))
            self.propagation = nn.ModuleList(_PixelPropagation(config.projector_out) for _ in range(2))
            self.target_backbone = copy.deepcopy(self.backbone)
            self.target_projectors = copy.deepcopy(self.projectors)
            for parameter in (*self.target_backbone.parameters(), *self.target_projectors.parameters()):
                parameter.requires_grad_(False)
            self.colour = transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                nn.Linear(512, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 3))
        self.grid = (config.image_size - config.patch) // config.patch_stride + 1
        dims = min(config.pca_dims, 512)
        # float64: dense pretraining concentrates the embeddings in few directions, and the
        # Mahalanobis distance over the weak ones cancels catastrophically in float32
        self.register_buffer("pca_mean", torch.zeros(512, dtype=torch.float64))
        self.register_buffer("pca_components", torch.zeros(dims, 512, dtype=torch.float64))
        self.register_buffer("density_mean", torch.zeros(dims, dtype=torch.float64))
        self.register_buffer("density_precision", torch.zeros(dims, dims, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    # --- pretraining -------------------------------------------------------------------------
    def _views(self, images: torch.Tensor, blur_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented views (N, 3, v, v) normalised, crop boxes (N, 4) as (top, left, h, w), flips (N,)."""
        size = self.config.view_size
        views, boxes, flips = [], [], []
        for image in images.float() / 255.0:
            top, left, height, width = transforms.RandomResizedCrop.get_params(image, self.config.crop_scale, (3 / 4, 4 / 3))
            view = transforms.functional.resized_crop(image, top, left, height, width, [size, size], antialias=True)
            flip = bool(torch.rand(()) < 0.5)
            if flip:
                view = view.flip(-1)
            view = self.colour(view)
            if torch.rand(()) < blur_p:
                sigma = float(torch.empty(()).uniform_(0.1, 2.0))
                kernel = 2 * int(3 * sigma + 0.5) + 1
                view = transforms.functional.gaussian_blur(view, [kernel, kernel], [sigma, sigma])
            views.append(view)
            boxes.append((top, left, height, width))
            flips.append(flip)
        stacked = imagenet_normalise(torch.stack(views))
        return (stacked, torch.tensor(boxes, dtype=torch.float32, device=images.device),
                torch.tensor(flips, device=images.device))

    @staticmethod
    def _bin_centres(boxes: torch.Tensor, flips: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image coordinates (N, grid*grid, 2) of each feature bin's centre, and bin diagonals (N,)."""
        steps = torch.arange(grid, dtype=torch.float32, device=boxes.device) + 0.5
        top, left, height, width = boxes.unbind(1)
        ys = top[:, None] + steps[None] * height[:, None] / grid
        columns = torch.where(flips[:, None], grid - steps[None], steps[None])  # a flipped view's column c is grid-1-c
        xs = left[:, None] + columns * width[:, None] / grid
        centres = torch.stack(torch.broadcast_tensors(ys[:, :, None], xs[:, None, :]), dim=-1).flatten(1, 2)
        return centres, torch.sqrt((height / grid) ** 2 + (width / grid) ** 2)

    def _positives(self, boxes: tuple[torch.Tensor, torch.Tensor], flips: tuple[torch.Tensor, torch.Tensor],
                   grid: int, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(N, P, P) bool: bin p of view 1 and bin q of view 2 see the same place (or are the top-1 pair)."""
        centres_1, diagonal_1 = self._bin_centres(boxes[0], flips[0], grid)
        centres_2, diagonal_2 = self._bin_centres(boxes[1], flips[1], grid)
        distance = torch.cdist(centres_1, centres_2)
        positive = distance < self.config.delta * torch.maximum(diagonal_1, diagonal_2)[:, None, None]
        similarity = torch.einsum("ncp,ncq->npq", F.normalize(features[0].flatten(2), dim=1),
                                  F.normalize(features[1].flatten(2), dim=1))
        top = similarity.flatten(1).argmax(1)
        positive.view(len(top), -1)[torch.arange(len(top)), top] = True
        return positive

    def _scale_loss(self, predicted: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        cosine = torch.einsum("ncp,ncq->npq", F.normalize(predicted.flatten(2), dim=1), F.normalize(target.flatten(2), dim=1))
        return -2.0 * (cosine * positive).sum() / positive.sum().clamp_min(1)

    def training_loss(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.pretraining == "cutpaste3way":
            return self._cutpaste_loss(windows[:, -1])
        images = windows[:, -1]
        view_1, boxes_1, flips_1 = self._views(images, blur_p=1.0)
        view_2, boxes_2, flips_2 = self._views(images, blur_p=0.1)
        online = [self.backbone(view_1), self.backbone(view_2)]
        with torch.no_grad():
            target = [self.target_backbone(view_1), self.target_backbone(view_2)]
            target = [[proj(f) for proj, f in zip(self.target_projectors, t)] for t in target]
        terms = {}
        for scale, name in enumerate(("c4", "c5")):
            grid = online[0][scale].shape[-1]
            positive = self._positives((boxes_1, boxes_2), (flips_1, flips_2), grid,
                                       (online[0][scale].detach(), online[1][scale].detach()))
            predicted = [self.propagation[scale](self.projectors[scale](o[scale])) for o in online]
            terms[f"loss_{name}"] = 0.5 * (self._scale_loss(predicted[0], target[1][scale], positive)
                                           + self._scale_loss(predicted[1], target[0][scale], positive.transpose(1, 2)))
        return {"loss": terms["loss_c4"] + terms["loss_c5"], **terms}

    def _cutpaste_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """3-way cross entropy: plain crop (0), crop with a CutPaste rectangle (1), with a scar (2)."""
        patch = self.config.cutpaste_patch
        samples = []
        for image in images.float() / 255.0:
            top, left = (int(torch.randint(0, self.image_size - patch + 1, ())) for _ in range(2))
            crop = image[:, top:top + patch, left:left + patch]
            samples += [crop, cut_paste(crop)[0], cut_paste_scar(crop)[0]]
        logits = self.classifier(self.backbone(imagenet_normalise(torch.stack(samples)))[1].mean((2, 3)))
        labels = torch.arange(3, device=logits.device).repeat(len(images))
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean().detach()}

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        if self.config.pretraining != "dense":
            return
        momentum = 1.0 - (1.0 - self.config.momentum) * (math.cos(math.pi * min(progress, 1.0)) + 1) / 2
        for online, target in ((self.backbone, self.target_backbone), (self.projectors, self.target_projectors)):
            for p_online, p_target in zip(online.parameters(), target.parameters()):
                p_target.mul_(momentum).add_(p_online.detach(), alpha=1.0 - momentum)
            for b_online, b_target in zip(online.buffers(), target.buffers()):
                b_target.copy_(b_online)

    # --- detector ----------------------------------------------------------------------------
    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> L2-normalised c5 patch embeddings (N, grid*grid, 512)."""
        patch, stride = self.config.patch, self.config.patch_stride
        # cut first, normalise the patches: the same values, and OpenVINO's int8 compiler reads a
        # normalisation before the cut as a dequantisation it cannot move through the cut (it refused)
        patches = F.unfold(images.float(), patch, stride=stride).transpose(1, 2).reshape(-1, 3, patch, patch)
        patches = imagenet_normalise(patches / 255.0)
        chunks = [patches] if torch.jit.is_tracing() else patches.split(self.config.embed_batch)  # export: any batch
        embedded = torch.cat([self.backbone(chunk)[1].mean((2, 3)) for chunk in chunks])
        return F.normalize(embedded, dim=1).view(images.shape[0], -1, 512)

    def images_per_graph_call(self) -> int:
        """As many images as ``embed_batch`` patches (``mtd_ds2``: 4, of 225 patches each; 1 at the
        paper's stride of 4), as eager scoring embeds them; the exported graph embeds a call's patches
        in one piece."""
        return max(1, self.config.embed_batch // self.grid**2)

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        from sklearn.covariance import ledoit_wolf
        from sklearn.decomposition import PCA

        embeddings = torch.cat([self.patch_embeddings(w[:, -1]).flatten(0, 1) for w in batches]).double().cpu().numpy()
        pca = PCA(n_components=self.pca_components.shape[0], svd_solver="full").fit(embeddings)
        projected = pca.transform(embeddings)
        covariance, _ = ledoit_wolf(projected)
        self.pca_mean.copy_(torch.from_numpy(pca.mean_))
        self.pca_components.copy_(torch.from_numpy(pca.components_))
        self.density_mean.copy_(torch.from_numpy(projected.mean(0)))
        self.density_precision.copy_(torch.from_numpy(np.linalg.inv(covariance)))
        self.fitted.fill_(True)

    def _spread(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """(N, g, g) patch scores -> (N, S, S) pixel map: each score spread over its patch by a Gaussian."""
        patch = self.config.patch
        axis = torch.arange(patch, dtype=torch.float32, device=patch_scores.device) - (patch - 1) / 2
        gauss = torch.exp(-axis ** 2 / (2 * self.config.map_sigma ** 2))
        kernel = (gauss[:, None] * gauss[None]).view(1, 1, patch, patch)
        maps = F.conv_transpose2d(patch_scores[:, None], kernel / kernel.max(), stride=self.config.patch_stride)
        return F.interpolate(maps, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)[:, 0]

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        if not bool(self.fitted):
            raise RuntimeError("DS2 scores only after fit_statistics (train it first)")
        embeddings = self.patch_embeddings(windows[:, -1]).double()
        projected = (embeddings - self.pca_mean) @ self.pca_components.T - self.density_mean
        distance = torch.einsum("npd,de,npe->np", projected, self.density_precision, projected).clamp_min(0).sqrt()
        patch_scores = distance.view(-1, self.grid, self.grid).float()
        return ScoreOutput(patch_scores.flatten(1).amax(1), self._spread(patch_scores))
