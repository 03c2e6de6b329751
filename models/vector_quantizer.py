"""Vector-quantised memory (VQ layer) used as an information-compression module."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def without_autocast(device: torch.device) -> AbstractContextManager:
    """A region computed in the tensors' own dtype (float32) even inside an autocast region on
    ``device``'s type: autocast disabled there, or nothing to disable on a device type autocast does not
    know (``meta``: the device checks of tests/test_devices.py run models there)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation with a straight-through gradient.

    Loss = ||sg(z) - q||^2 + beta * ||z - sg(q)||^2 (codebook term + commitment term).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))

    def squared_distances(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, K) squared L2 distances of (M, D) vectors to every codeword, in float32 even under autocast:
        bf16 distances would pick wrong codewords."""
        with without_autocast(flat.device):
            flat, codebook = flat.float(), self.codebook.float()
            return flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codebook.t() + codebook.pow(2).sum(1).unsqueeze(0)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index (N, H, W) of the nearest codeword (L2) of every position of z (N, D, H, W)."""
        n, d, h, w = z.shape
        return self.squared_distances(z.permute(0, 2, 3, 1).reshape(-1, d)).argmin(dim=1).view(n, h, w)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (N, D, H, W) -> (quantised with straight-through grad, loss, code indices (N, H, W))."""
        indices = self.nearest(z)
        quantised = self.codebook[indices].permute(0, 3, 1, 2)
        loss = F.mse_loss(quantised, z.detach()) + self.beta * F.mse_loss(z, quantised.detach())
        straight_through = z + (quantised - z).detach()
        return straight_through, loss, indices


class EMAVectorQuantizer(VectorQuantizer):
    """Codebook learned by exponential moving averages of the assigned encoder outputs (VQ-VAE-2);
    the loss holds only the commitment term. ``codebook`` is a buffer-like parameter without grad.

    ``dead_code_threshold`` > 0: in training, every codeword whose moving-average use falls below it
    (fewer assignments per batch) restarts at a random encoder output of the batch, as in Jukebox. The
    first batch so initialises the whole codebook from data. Without it the codebook collapses: a
    normal(0, 1) codebook far from the young encoder's outputs ends with ~1-2 % of its codes in use.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5,
                 dead_code_threshold: float = 0.0) -> None:
        super().__init__(num_codes, dim, beta)
        self.codebook.requires_grad_(False)
        self.codebook.data.normal_()
        self.decay, self.eps, self.dead_code_threshold = decay, eps, dead_code_threshold
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("code_sum", self.codebook.data.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self.nearest(z)
        if self.training:
            with torch.no_grad(), without_autocast(z.device):
                flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                one_hot = F.one_hot(indices.flatten(), len(self.codebook)).float()
                self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
                self.code_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
                total = self.cluster_size.sum()
                smoothed = (self.cluster_size + self.eps) / (total + len(self.codebook) * self.eps) * total
                self.codebook.data.copy_(self.code_sum / smoothed[:, None])
                self._restart_dead_codes(flat)
        quantised = self.codebook[indices].permute(0, 3, 1, 2)
        loss = self.beta * F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), loss, indices

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        if not dead.any():
            return
        samples = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
        self.codebook.data[dead] = samples
        self.code_sum[dead] = samples * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold

    def codes_in_use(self) -> int:
        """Codewords assigned more than once per batch on (moving) average (a restarted one sits at the threshold)."""
        return int((self.cluster_size > max(self.dead_code_threshold, 1.0)).sum())
