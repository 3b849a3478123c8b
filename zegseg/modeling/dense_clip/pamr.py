"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), as TCL applies it at inference.

Each pixel's 8 neighbours at each dilation d (offsets in {-d, 0, d}², the centre excluded; replicate padding) get
an affinity from the image: ``a = -|I_p - I_q| / (1e-8 + 0.1 σ_p)`` per channel, σ_p the standard deviation of
the image over the 3 x 3 windows of all dilations around p (centres included), averaged over channels and turned
into weights by a softmax over all neighbours. The masks are then smoothed ``num_iter`` times by these weights,
``m_p ← Σ_q w_pq m_q``, so mask values spread within regions of similar colour and stop at image edges.
TCL uses 10 iterations and dilations (1, 2, 4, 8, 12, 24), on the image resized to the masks' size.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PAMR"]

_RING: Tuple[Tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(x: Tensor, offsets: Sequence[Tuple[int, int]]) -> Tensor:
    """(B, C, H, W) → (B, C, P, H, W): ``out[:, :, p, i, j] = x[:, :, i + dy_p, j + dx_p]`` (replicate borders)."""
    h, w = x.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    xp = F.pad(x, [pad] * 4, mode="replicate")
    return torch.stack([xp[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offsets], dim=2)


class PAMR(nn.Module):
    """Refine soft masks with image-adaptive local affinities (no parameters)."""

    def __init__(self, num_iter: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)):
        """
        Args:
            num_iter: smoothing iterations.
            dilations: neighbour distances (positive integers).
        """
        super().__init__()
        if num_iter < 0:
            raise ValueError(f"PAMR iterations must be >= 0, got {num_iter}")
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"PAMR dilations must be positive integers, got {list(dilations)}")
        self.num_iter = num_iter
        self.dilations: List[int] = [int(d) for d in dilations]
        self.neighbours = [(dy * d, dx * d) for d in self.dilations for dy, dx in _RING]
        self.windows = [(dy * d, dx * d) for d in self.dilations for dy, dx in _RING[:4] + ((0, 0),) + _RING[4:]]

    def affinity(self, image: Tensor) -> Tensor:
        """Neighbour weights of every pixel.

        Args:
            image: (B, C, H, W) float.
        Returns:
            (B, P, H, W), P = 8 · len(dilations), summing to 1 over P.
        """
        std = _shifted(image, self.windows).std(dim=2, keepdim=True)  # (B, C, 1, H, W)
        diff = (_shifted(image, self.neighbours) - image[:, :, None]).abs()  # (B, C, P, H, W)
        return (-diff / (1e-8 + 0.1 * std)).mean(dim=1).softmax(dim=1)

    @torch.no_grad()
    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        """
        Args:
            image: (B, C, H, W) the image at the resolution to refine at.
            masks: (B, K, h, w) soft masks; resized (bilinear, aligned corners) to (H, W) first.
        Returns:
            (B, K, H, W) refined masks.
        """
        masks = F.interpolate(masks.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)
        weights = self.affinity(image.float())[:, None]  # (B, 1, P, H, W)
        for _ in range(self.num_iter):
            masks = (_shifted(masks, self.neighbours) * weights).sum(dim=2)
        return masks

    def extra_repr(self) -> str:
        return f"num_iter={self.num_iter}, dilations={self.dilations}"
