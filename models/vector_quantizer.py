"""Vector-quantised memory (VQ layer) used as an information-compression module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation with a straight-through gradient.

    Loss = ||sg(z) - q||^2 + beta * ||z - sg(q)||^2 (codebook term + commitment term).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index (N, H, W) of the nearest codeword (L2) of every position of z (N, D, H, W)."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            - 2.0 * flat @ self.codebook.t()
            + self.codebook.pow(2).sum(1).unsqueeze(0)
        )
        return distances.argmin(dim=1).view(n, h, w)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (N, D, H, W) -> (quantised with straight-through grad, loss, code indices (N, H, W))."""
        indices = self.nearest(z)
        quantised = self.codebook[indices].permute(0, 3, 1, 2)
        loss = F.mse_loss(quantised, z.detach()) + self.beta * F.mse_loss(z, quantised.detach())
        straight_through = z + (quantised - z).detach()
        return straight_through, loss, indices


class EMAVectorQuantizer(VectorQuantizer):
    """Codebook learned by exponential moving averages of the assigned encoder outputs (VQ-VAE-2);
    the loss holds only the commitment term. ``codebook`` is a buffer-like parameter without grad."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__(num_codes, dim, beta)
        self.codebook.requires_grad_(False)
        self.codebook.data.normal_()
        self.decay, self.eps = decay, eps
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("code_sum", self.codebook.data.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self.nearest(z)
        if self.training:
            with torch.no_grad():
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                one_hot = F.one_hot(indices.flatten(), len(self.codebook)).type(flat.dtype)
                self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
                self.code_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
                total = self.cluster_size.sum()
                smoothed = (self.cluster_size + self.eps) / (total + len(self.codebook) * self.eps) * total
                self.codebook.data.copy_(self.code_sum / smoothed[:, None])
        quantised = self.codebook[indices].permute(0, 3, 1, 2)
        loss = self.beta * F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), loss, indices
