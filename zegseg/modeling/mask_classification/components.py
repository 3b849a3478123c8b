"""Connected components of query masks as separate segments (a zegseg option).

A query's mask may cover several separate parts of an image, e.g. every shape of one colour when its features
cannot yet tell the shapes apart. CLIP then sees one crop holding all of them and names none well. With
``MODEL.CLIP.COMPONENT_MIN_AREA > 0`` each connected component (4-connectivity) of a query's binarised mask, of at
least that fraction of the image, becomes a segment of its own: it keeps the query's segment-classifier logits,
gets its own CLIP crop, and its mask is the query's mask logits on the component and a one-pixel margin around it
(far below zero elsewhere).
Smaller components are dropped. Components are found at the mask-feature stride, one ``scipy.ndimage.label``
call for all queries (:func:`connected_components`, which the leftover regions use too).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.nn import functional as F

__all__ = ["OFF_MASK_LOGIT", "connected_components", "split_components"]

OFF_MASK_LOGIT = -30.0  # mask logit outside a component: sigmoid ~1e-13


def connected_components(binary: Tensor, min_pixels: float) -> Tuple[Tensor, Tensor]:
    """The connected components (4-connectivity) of every plane of a stack of binary maps, in one
    ``scipy.ndimage.label`` call.

    Args:
        binary: (P, h, w) bool.
        min_pixels: smallest component kept, in pixels (at least 1).
    Returns:
        plane: (S,) int64, the plane each kept component lies in (ascending);
        on: (S, h, w) bool, its pixels.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # connect within a plane only
    labels, count = ndimage.label(binary.cpu().numpy(), structure=structure)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.flatnonzero(areas[1:] >= max(min_pixels, 1)) + 1
    ids, first_pixel = np.unique(labels.ravel(), return_index=True)  # label 0 is absent when nothing is background
    plane = first_pixel[np.searchsorted(ids, keep)] // labels[0].size
    plane = torch.as_tensor(plane, dtype=torch.int64, device=binary.device)
    keep_t = torch.as_tensor(keep, device=binary.device)
    on = torch.as_tensor(labels, device=binary.device)[plane] == keep_t[:, None, None]
    return plane, on


def split_components(
    masks: Tensor, visible_size: Sequence[int], min_area: float, threshold: float = 0.5
) -> Tuple[Tensor, Tensor]:
    """Split every query's mask into its connected components.

    Args:
        masks: (Q, h, w) mask logits (at any stride).
        visible_size: (h_v, w_v) the part of the masks over the image (not padding); components count pixels there.
        min_area: smallest component kept, as a fraction of ``h_v · w_v``.
        threshold: a pixel is in a query's mask where ``sigmoid(logit) > threshold``.
    Returns:
        source: (S,) int64, the query each segment comes from (queries with no kept component give none);
        segment_masks: (S, h, w) the source query's logits on the segment's component and the 8 neighbours of its
            pixels, ``OFF_MASK_LOGIT`` elsewhere.
    """
    h, w = visible_size
    binary = torch.zeros(masks.shape, dtype=torch.bool, device=masks.device)
    binary[:, :h, :w] = masks[:, :h, :w].float().sigmoid() > threshold
    source, on = connected_components(binary, min_area * h * w)
    if source.numel() == 0:
        return source, masks[:0]
    # one pixel of margin: the query's own falling logits around the component, so that upsampling does not
    # shrink it (an abrupt OFF_MASK_LOGIT next to the component would be interpolated into its edge)
    on = F.max_pool2d(on[:, None].float(), kernel_size=3, stride=1, padding=1)[:, 0] > 0
    segment_masks = torch.where(on, masks[source], torch.full_like(masks[source], OFF_MASK_LOGIT))
    return source, segment_masks
