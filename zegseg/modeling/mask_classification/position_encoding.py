"""Sine positional encoding of a 2-D feature map (the "Attention is all you need" encoding, per axis, as in DETR)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinePositionEncoding"]


class SinePositionEncoding(nn.Module):
    """Fixed sine/cosine encoding of the (y, x) position of every pixel of a feature map.

    The first ``num_pos_feats`` output channels encode y, the last ``num_pos_feats`` encode x; within each half,
    sines and cosines of geometrically spaced frequencies alternate. With ``normalize``, positions are cumulative
    counts of valid pixels divided by the valid extent and scaled to ``[0, scale]``, so the encoding does not
    depend on the map's absolute size (nor on padding, when a padding mask is given).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        *,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
        """
        Args:
            num_pos_feats: channels per axis (the output has ``2 * num_pos_feats`` channels); must be even.
            temperature: base of the geometric frequency progression.
            normalize: normalise positions to ``[0, scale]`` over the valid extent of each image.
            scale: range of normalised positions.
        """
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            x: (B, C, H, W) feature map; only its shape, device and dtype are used.
            padding_mask: optional (B, H, W) bool, True where a pixel is padding.
        Returns:
            (B, 2 * num_pos_feats, H, W) encoding, in ``x``'s dtype.
        """
        b, _, h, w = x.shape
        if padding_mask is None:
            valid = torch.ones((b, h, w), device=x.device, dtype=torch.float32)
        else:
            valid = (~padding_mask).to(torch.float32)
        y_pos = valid.cumsum(1)
        x_pos = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_pos = y_pos / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale
        idx = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        freq = self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = y_pos[..., None] / freq  # (B, H, W, F)
        pos_x = x_pos[..., None] / freq
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)
