"""CLIP's image encoder on inputs of any size (ViT models), as the simple baseline's modified CLIP allows.

OpenAI's ViT adds a learned positional embedding of ``(R / P)^2 + 1`` tokens (R the input resolution, P the patch
size), so it only takes R x R inputs. For an (H, W) input the simple baseline's CLIP resizes the patch grid of the
positional embedding bicubically (``align_corners=False``) to ``(H // P, W // P)`` (the class token's embedding is
kept) and runs the same layers; its prompt learning trains on 244 x 224 crops that way. At R x R the result is
CLIP's own ``encode_image``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from clip.model import VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["embed_patches", "encode_image"]


def encode_image(clip_model: nn.Module, images: Tensor) -> Tensor:
    """Image embeddings of (B, 3, H, W) CLIP-normalised images of any size.

    Args:
        clip_model: an OpenAI-format CLIP. Inputs other than ``input_resolution`` squared need a ViT image tower.
        images: (B, 3, H, W); H and W at least the patch size.
    Returns:
        (B, D) unnormalised embeddings in the CLIP model's dtype.
    Raises:
        ValueError: a non-square-resolution input for a CLIP whose image tower is not a ViT.
    """
    visual = clip_model.visual
    res = int(visual.input_resolution)
    if tuple(images.shape[-2:]) == (res, res):
        return clip_model.encode_image(images)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{type(visual).__name__} image towers take {res} x {res} inputs only, got {tuple(images.shape[-2:])}: "
            f"use INPUT.SEGMENT_CROP.SIZE ({res}, {res}) or a ViT CLIP"
        )
    x, _ = embed_patches(visual, images)
    x = visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
    x = visual.ln_post(x[:, 0, :])
    return x @ visual.proj if visual.proj is not None else x


def embed_patches(visual: VisionTransformer, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    """A ViT image tower's input tokens for (B, 3, H, W) CLIP-normalised images of any size: patch embeddings after
    the class token, plus the positional embedding (its patch grid resized bicubically to the input's), then
    ``ln_pre``.

    Returns:
        tokens: (B, 1 + gh * gw, width) in the tower's dtype, class token first, patches row by row.
        grid: (gh, gw) = (H // P, W // P), P the patch size.
    Raises:
        ValueError: an input smaller than the patch size.
    """
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # (B, width, gh, gw)
    b, width, gh, gw = x.shape
    if gh == 0 or gw == 0:
        raise ValueError(f"input {tuple(images.shape[-2:])} is smaller than CLIP's patch size")
    x = x.reshape(b, width, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(dtype).expand(b, 1, width)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    grid = math.isqrt(pos.shape[0] - 1)
    if (gh, gw) != (grid, grid):
        patches = pos[1:].T.reshape(1, width, grid, grid)
        patches = F.interpolate(patches, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patches.reshape(width, gh * gw).T])
    return visual.ln_pre(x + pos.to(dtype)), (gh, gw)
