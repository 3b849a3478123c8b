"""Feature generators: ZS3Net's GMMN (class embedding + noise → one pixel feature) and CaGNet's per-pixel
generator (class-embedding map + latent-code map → feature map)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GMMNGenerator", "PixelFeatureGenerator"]


class GMMNGenerator(nn.Module):
    """ZS3Net's generative moment-matching network.

    ``concat(embedding, noise)`` → Linear → LeakyReLU(0.2) → Dropout → Linear, no output activation (the
    official ``GMMNnetwork``: 600 → 256 → 256 with word2vec and U[0, 1) noise, Xavier-uniform weights, bias 0.01).
    """

    def __init__(
        self, *, embed_dim: int, noise_dim: int, hidden_dim: int, feature_dim: int, dropout: float = 0.5
    ):
        """
        Args:
            embed_dim: E, width of the class embeddings.
            noise_dim: width of the noise drawn per generated feature.
            hidden_dim: width of the hidden layer.
            feature_dim: D, width of the generated features (the segmentation network's pixel features).
            dropout: dropout after the hidden layer.
        """
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(
            nn.Linear(embed_dim + noise_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
        )
        for layer in (self.net[0], self.net[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.01)

    def forward(self, embeddings: Tensor, noise: Tensor | None = None) -> Tensor:
        """
        Args:
            embeddings: (..., E) the class embedding of each feature to generate.
            noise: (..., noise_dim); ``None`` draws U[0, 1) noise (the official code's ``torch.rand``).
        Returns:
            (..., D) generated features.
        """
        if noise is None:
            noise = torch.rand(*embeddings.shape[:-1], self.noise_dim, device=embeddings.device)
        return self.net(torch.cat([embeddings, noise], dim=-1))


class PixelFeatureGenerator(nn.Module):
    """CaGNet's generator: per-pixel 1x1 convolutions from ``concat(class embedding, latent code)`` to a feature.

    Hidden layers: LeakyReLU(0.2) then dropout; the output goes through a sigmoid, as the real features do (the
    official network: 1200 → 1024 → 960 → 864 → 784 → 720 → 600 with dropouts 0.1/0.1/0.3/0.5/0.5).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        dropouts: Sequence[float],
        feature_dim: int,
    ):
        """
        Args:
            embed_dim: E, width of the class embeddings.
            latent_dim: width of the latent code (CaGNet: the feature width D).
            hidden_dims: widths of the hidden layers.
            dropouts: one dropout probability per hidden layer.
            feature_dim: D, width of the generated features.
        Raises:
            ValueError: ``dropouts`` and ``hidden_dims`` differ in length.
        """
        super().__init__()
        if len(dropouts) != len(hidden_dims):
            raise ValueError(f"{len(hidden_dims)} hidden layers need as many dropouts, got {len(dropouts)}")
        layers = []
        width = embed_dim + latent_dim
        for hidden, p in zip(hidden_dims, dropouts):
            layers += [nn.Conv2d(width, hidden, 1), nn.LeakyReLU(0.2), nn.Dropout(p)]
            width = hidden
        layers += [nn.Conv2d(width, feature_dim, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, embedding_map: Tensor, latent: Tensor) -> Tensor:
        """
        Args:
            embedding_map: (B, E, H, W) the class embedding of each pixel.
            latent: (B, latent_dim, H, W) the latent code (contextual in training, N(0, 1) when fine-tuning).
        Returns:
            (B, D, H, W) generated features in (0, 1).
        """
        return self.net(torch.cat([embedding_map, latent], dim=1))
