"""CaGNet's Contextual Module: multi-scale context of every pixel, summarised as a per-pixel latent code."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ContextualModule", "ContextualOutput"]


class ContextualOutput(NamedTuple):
    """What :class:`ContextualModule` returns; all (B, D, H, W)."""

    features: Tensor  # the real features ``sigmoid(h + h * sigmoid(z))``
    latent: Tensor  # z, sampled in training, μ otherwise
    mu: Tensor
    logvar: Tensor  # log σ², >= 0 (a ReLU output, as in the official network)


class ContextualModule(nn.Module):
    """Serial dilated convolutions, a context selector and a Gaussian latent code per pixel.

    With h the (B, D, H, W) segmentation features: ``c1 = ReLU(conv_d1(sigmoid(h)))``, ``c2 = ReLU(conv_d2(c1))``,
    ``c3 = ReLU(conv_d3(c2))`` (3x3, dilations in series); the selector ``A = sigmoid(ReLU(conv([c1, c2, c3])))``
    gives one weight per scale per pixel and ``c_i ← c_i · A_i``; ``p = ReLU(1x1([c1, c2, c3]))``;
    ``μ = conv(p)``, ``log σ² = ReLU(conv(p))``; ``z = μ + ε · exp(½ log σ²)`` when sampling, else μ; the features
    are ``sigmoid(h + h · sigmoid(z))`` (the official code's form; the paper omits the outer sigmoid).
    All convolutions are bias-free, without normalisation, as in the official network.
    """

    def __init__(self, *, feature_dim: int, hidden_dim: int, dilations: Sequence[int] = (1, 2, 5)):
        """
        Args:
            feature_dim: D, width of h, of the latent code and of the output features.
            hidden_dim: width of the dilated convolutions (official: 256 for D = 600).
            dilations: the serial dilations (official: 1, 2, 5).
        """
        super().__init__()
        widths = [feature_dim] + [hidden_dim] * len(dilations)
        self.context = nn.ModuleList(
            nn.Conv2d(widths[i], hidden_dim, 3, padding=d, dilation=d, bias=False) for i, d in enumerate(dilations)
        )
        concat = hidden_dim * len(dilations)
        self.selector = nn.Conv2d(concat, len(dilations), 3, padding=1, bias=False)
        self.fuse = nn.Conv2d(concat, feature_dim, 1, bias=False)
        self.mu = nn.Conv2d(feature_dim, feature_dim, 3, padding=1, bias=False)
        self.logvar = nn.Conv2d(feature_dim, feature_dim, 3, padding=1, bias=False)

    def forward(self, h: Tensor, sample: bool) -> ContextualOutput:
        """
        Args:
            h: (B, D, H, W) segmentation features.
            sample: draw z (training) instead of taking μ.
        Returns:
            :class:`ContextualOutput`.
        """
        scales = []
        x = torch.sigmoid(h)
        for conv in self.context:
            x = F.relu(conv(x))
            scales.append(x)
        weights = torch.sigmoid(F.relu(self.selector(torch.cat(scales, dim=1))))  # (B, S, H, W)
        selected = torch.cat([c * weights[:, i : i + 1] for i, c in enumerate(scales)], dim=1)
        p = F.relu(self.fuse(selected))
        mu, logvar = self.mu(p), F.relu(self.logvar(p))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return ContextualOutput(torch.sigmoid(h + h * torch.sigmoid(z)), z, mu, logvar)
