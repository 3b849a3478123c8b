"""Leftover regions: the parts of an image that no segment claims, classified by CLIP alone (a zegseg option).

A mask-classification model trained on seen classes learns not to put masks on the pixels of unseen classes (they
are background of every mask in MaskFormer's losses), and with few seen stuff classes no query generalises to an
unseen stuff region: its pixels end up with near-zero scores for every class and take the argmax of noise. With
``MODEL.CLIP.LEFTOVER_MIN_AREA > 0`` each connected region of unclaimed pixels covering at least that fraction of
the image becomes one more segment, classified by the frozen CLIP's view of its crop and weighted per pixel by how
unclaimed the pixel is.

A pixel's claim is ``max_q sigmoid(mask_q)`` over every segment, whatever its class: a segment the classifier
calls "no object" is often an unseen thing (seen-class training teaches the classifier that unseen things are
background, not the masks that they are not things), and its pixels must not join the region around it, or CLIP
names the region after the thing it sees in the crop. Unclaimed pixels have claim < 0.5. Regions are found on the
mask-feature grid, so thin seams between segments do not form regions.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .components import connected_components

__all__ = ["claim_map", "leftover_regions"]


def claim_map(masks: Tensor) -> Tensor:
    """How strongly the segments claim each pixel.

    Args:
        masks: (Q, H, W) mask logits of every segment.
    Returns:
        (H, W) in [0, 1]: ``max_q sigmoid(mask_q)`` (0 if there is no segment).
    """
    if masks.shape[0] == 0:
        return masks.new_zeros(masks.shape[-2:])
    return masks.float().sigmoid().amax(dim=0)


def leftover_regions(claim: Tensor, image_size: Sequence[int], min_area: float) -> Tuple[Tensor, Tensor]:
    """The connected regions of unclaimed pixels (claim < 0.5, 4-connectivity) inside the image.

    Args:
        claim: (H_pad, W_pad) claim map (:func:`claim_map`) over the padded image.
        image_size: (h, w) of the image inside the padding; pixels outside it belong to no region.
        min_area: smallest region kept, as a fraction of ``h · w``.
    Returns:
        regions: (R, H_pad, W_pad) bool, one mask per kept region (R may be 0).
        weights: (R, H_pad, W_pad) float, ``1 - claim`` inside each region and 0 outside.
    """
    h, w = image_size
    unclaimed = torch.zeros(claim.shape, dtype=torch.bool, device=claim.device)
    unclaimed[:h, :w] = claim[:h, :w] < 0.5
    _, regions = connected_components(unclaimed[None], min_area * h * w)
    weights = regions * (1.0 - claim)[None]
    return regions, weights
