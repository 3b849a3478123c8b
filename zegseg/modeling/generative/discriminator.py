"""CaGNet's discriminator and classifier, which share one trunk."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

__all__ = ["DiscriminatorClassifier"]


class DiscriminatorClassifier(nn.Module):
    """A shared 1x1 trunk (conv → ReLU → dropout) with two per-pixel heads: real-vs-generated (sigmoid) and the
    K-class classifier, which is the segmentation network's final classifier at inference."""

    def __init__(self, *, feature_dim: int, hidden_dim: int, num_classes: int, dropout: float = 0.5):
        """
        Args:
            feature_dim: D, width of the (real or generated) features.
            hidden_dim: width of the trunk (official: 1024).
            num_classes: K, seen + unseen classes.
            dropout: dropout after the trunk.
        """
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(feature_dim, hidden_dim, 1), nn.ReLU(), nn.Dropout(dropout))
        self.gan_head = nn.Sequential(nn.Conv2d(hidden_dim, 1, 1), nn.Sigmoid())
        self.cls_head = nn.Conv2d(hidden_dim, num_classes, 1)

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            features: (B, D, H, W).
        Returns:
            ``(realness, logits)``: (B, 1, H, W) in (0, 1) and (B, K, H, W).
        """
        hidden = self.trunk(features)
        return self.gan_head(hidden), self.cls_head(hidden)

    def classify(self, features: Tensor) -> Tensor:
        """(B, D, H, W) → (B, K, H, W) class logits (the classifier head only)."""
        return self.cls_head(self.trunk(features))
