"""CLIP's region crops as the simple baseline (Xu et al., ECCV 2022, ``zsseg.baseline``) builds them, vectorised.

The official procedure, one mask at a time:

1. the mask (``sigmoid(logit) > threshold``, at the network input's size inside the padding) gives a tight box
   with integer pixel bounds, right and bottom exclusive (``x2 = last column + 1``);
2. the box is scaled about its centre by the expand ratio in float32 arithmetic, each coordinate truncated
   towards zero (Python's ``int``), then clamped to the image;
3. the 0-255 image is cut to the box, its pixels outside the mask replaced by CLIP's mean colour, and the crop
   normalised with CLIP's mean and standard deviation (so the fill is 0 up to rounding);
4. the crop is resized to 224 x 224 by ``F.interpolate(mode="bicubic", align_corners=False)`` (Keys' cubic with
   a = -0.75, source index ``scale * (i + 0.5) - 0.5``, taps clamped to the crop's border).

Empty masks are not cropped (``valid`` False; the two-stage model lets CLIP abstain on them).

:func:`simple_baseline_crops` computes these crops for all masks of an image. Boxes, masking and fill are
vectorised; the bicubic resize has two implementations that agree to about 1e-6:

* per box (the default on CPUs): one native ``F.interpolate`` per box, bit for bit the official computation and,
  on a CPU, the faster one (the native kernel fuses the 16 taps of each output pixel);
* batched (the default on GPUs, where a per-box loop costs kernel launches): bicubic resampling is separable, so
  each crop is a horizontal pass (4 taps per output column) over its box's rows and a vertical pass (4 taps per
  output row), both gathers whose taps and weights are computed per mask from its box size, so boxes of
  different sizes share one computation. Masks go in chunks of similar box height, which bounds the memory of
  the gathered taps. Tap positions are computed as PyTorch's kernel computes them (float32 source index from a
  fused multiply-add), weights in float64.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from . import region_encoder  # a module reference: region_encoder imports this module too

__all__ = ["SIMPLE_BASELINE_CROP_SIZE", "bicubic_taps", "simple_baseline_boxes", "simple_baseline_crops"]

SIMPLE_BASELINE_CROP_SIZE = 224
"""The official code resizes every crop to 224 x 224, whatever the CLIP model."""

_CUBIC_A = -0.75  # Keys' cubic convolution parameter of PyTorch's (and OpenCV's) bicubic interpolation
_MAX_GATHERED = 1 << 24  # gathered taps (floats) per chunk: about 64 MB


def simple_baseline_boxes(masks: Tensor, expand_ratio: float = 1.0) -> Tuple[Tensor, Tensor]:
    """Integer crop boxes of binary masks, as the official code draws and expands them, vectorised.

    Args:
        masks: (Q, H, W) bool.
        expand_ratio: scale of each box about its centre (float32 arithmetic, coordinates truncated towards 0).
    Returns:
        boxes: (Q, 4) int64 ``(x1, y1, x2, y2)``, ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H`` (right and
            bottom exclusive). A box that expansion would leave without a row or column (the official code fails
            there) keeps one. Empty masks get ``(0, 0, W, H)``.
        valid: (Q,) bool, False for empty masks.
    """
    if masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(f"masks must be (Q, H, W) bool, got {masks.dtype} {tuple(masks.shape)}")
    if expand_ratio <= 0:
        raise ValueError(f"box expand ratio must be positive, got {expand_ratio}")
    _, h, w = masks.shape
    rows = masks.any(dim=2)  # (Q, H)
    cols = masks.any(dim=1)  # (Q, W)
    valid = rows.any(dim=1)
    rows, cols = rows.to(torch.uint8), cols.to(torch.uint8)  # argmax finds the first 1
    y1, y2 = rows.argmax(dim=1), h - rows.flip(1).argmax(dim=1)
    x1, x2 = cols.argmax(dim=1), w - cols.flip(1).argmax(dim=1)
    if expand_ratio != 1.0:
        x1, y1, x2, y2 = (v.float() for v in (x1, y1, x2, y2))
        cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
        half_w, half_h = 0.5 * ((x2 - x1) * expand_ratio), 0.5 * ((y2 - y1) * expand_ratio)
        x1, y1, x2, y2 = (v.trunc().long() for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    x1, y1 = x1.clamp(0, w - 1), y1.clamp(0, h - 1)
    x2, y2 = torch.maximum(x2.clamp(max=w), x1 + 1), torch.maximum(y2.clamp(max=h), y1 + 1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    whole = torch.tensor([0, 0, w, h], device=masks.device)
    return torch.where(valid[:, None], boxes, whole), valid


def bicubic_taps(sizes: Tensor, out_size: int) -> Tuple[Tensor, Tensor]:
    """Taps and weights of ``F.interpolate(mode="bicubic", align_corners=False)`` from lengths ``sizes`` to
    ``out_size``, per length.

    Args:
        sizes: (K,) int64 input lengths (>= 1).
        out_size: S, the output length.
    Returns:
        index: (K, S, 4) int64 input positions of each output's taps, clamped to ``[0, size - 1]``.
        weight: (K, S, 4) float32 cubic weights (they sum to 1 over the taps).
    """
    n = sizes.to(torch.float32)[:, None]  # (K, 1)
    scale = (n / out_size).double()  # float32 division, as the kernel's scale
    dst = torch.arange(out_size, device=sizes.device, dtype=torch.float64)
    real = (scale * (dst + 0.5) - 0.5).float()  # one rounding: the kernel's fused multiply-add
    first = torch.minimum(torch.floor(real), n - 1)
    t = (real - first).clamp(0.0, 1.0).double()
    a = _CUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 <= |x| <= 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weight = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1).float()
    offsets = torch.arange(-1, 3, device=sizes.device)
    index = torch.minimum((first.long()[..., None] + offsets).clamp(min=0), sizes[:, None, None] - 1)
    return index, weight


def _height_chunks(heights: Tensor, out_size: int) -> List[Tensor]:
    """Indices of the masks, tallest box first, split so that each chunk's gathered taps fit the memory budget."""
    order = heights.argsort(descending=True)
    per_row = 3 * out_size * 4  # gathered floats per box row (channels x output columns x taps)
    chunks, start = [], 0
    tallest = heights[order].tolist()
    while start < len(tallest):
        count = max(1, min(len(tallest) - start, _MAX_GATHERED // (per_row * tallest[start])))
        chunks.append(order[start : start + count])
        start += count
    return chunks


def _resample_chunk(image: Tensor, masks: Tensor, fill: Tensor, boxes: Tensor, out_size: int) -> Tensor:
    """Masked, bicubically resized crops of one chunk, batched (see the module docstring).

    Args:
        image: (3, H, W) float32, CLIP-normalised.
        masks: (K, H, W) bool.
        fill: (3,) value of the pixels outside the mask.
        boxes: (K, 4) int64 boxes of :func:`simple_baseline_boxes`.
        out_size: S.
    Returns:
        (K, 3, S, S) float32.
    """
    num, h, w = masks.shape
    x1, y1 = boxes[:, 0], boxes[:, 1]
    box_w, box_h = boxes[:, 2] - x1, boxes[:, 3] - y1
    tallest = int(box_h.max())
    # Horizontal pass over each box's rows (rows past a short box repeat its last row; no vertical tap reads them).
    local_rows = torch.minimum(torch.arange(tallest, device=boxes.device), box_h[:, None] - 1)  # (K, R)
    cols, wx = bicubic_taps(box_w, out_size)  # (K, S, 4)
    flat = (y1[:, None] + local_rows)[:, :, None, None] * w + (x1[:, None, None] + cols)[:, None]  # (K, R, S, 4)
    inside = masks.reshape(num, h * w).gather(1, flat.reshape(num, -1)).view(flat.shape)
    taps = torch.where(inside, image.reshape(3, h * w)[:, flat], fill.view(3, 1, 1, 1, 1))  # (3, K, R, S, 4)
    rows = taps[..., 0] * wx[:, None, :, 0]
    for j in range(1, 4):
        rows = rows + taps[..., j] * wx[:, None, :, j]  # (3, K, R, S)
    # Vertical pass.
    iy, wy = bicubic_taps(box_h, out_size)  # (K, S, 4)
    index = iy.reshape(num, 1, out_size * 4, 1).expand(num, 3, out_size * 4, out_size)
    taps = rows.permute(1, 0, 2, 3).gather(2, index).view(num, 3, out_size, 4, out_size)
    out = taps[:, :, :, 0] * wy[:, None, :, 0, None]
    for j in range(1, 4):
        out = out + taps[:, :, :, j] * wy[:, None, :, j, None]
    return out


def _resample_per_box(image: Tensor, masks: Tensor, fill: Tensor, boxes: Tensor, out_size: int) -> Tensor:
    """The same crops with one native ``F.interpolate`` call per box: bit for bit the official computation.

    On a CPU this is the faster path: the native kernel fuses the 16 taps of an output pixel, while the batched
    gathers of :func:`_resample_chunk` materialise them (measured, 100 proposal masks of a 640 x 853 image, one
    thread: 1.7 s per box, 6.4 s batched). Arguments and result as :func:`_resample_chunk`.
    """
    crops = []
    for x1, y1, x2, y2 in boxes.tolist():
        region = torch.where(masks[len(crops), y1:y2, x1:x2], image[:, y1:y2, x1:x2], fill.view(3, 1, 1))
        crops.append(F.interpolate(region[None], size=(out_size, out_size), mode="bicubic", align_corners=False))
    return torch.cat(crops)


def simple_baseline_crops(
    image: Tensor,
    masks: Tensor,
    *,
    out_size: int = SIMPLE_BASELINE_CROP_SIZE,
    expand_ratio: float = 1.0,
    batched: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    """The simple baseline's CLIP crop of every mask (module docstring).

    Args:
        image: (3, H, W) float in CLIP's normalised RGB space (``normalize_for_clip`` of the 0-255 network input).
        masks: (Q, H, W) bool over the same image.
        out_size: side S of the square crops (the official code: 224).
        expand_ratio: box scale (the official MODEL.CLIP_ADAPTER.MASK_EXPAND_RATIO, 1.0 in its configs).
        batched: resample all boxes in batched gathers (True) or with one native bicubic call per box (False);
            ``None``: batched on GPUs, per box on CPUs (see :func:`_resample_per_box`).
    Returns:
        crops: (Q, 3, S, S) float32; the pixels outside a mask carry CLIP's mean colour (0 up to rounding). Rows
            of empty masks are 0.
        valid: (Q,) bool, False for empty masks (not cropped).
    """
    if image.ndim != 3 or image.shape[0] != 3 or masks.ndim != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image (3, H, W) and masks (Q, H, W) must share H, W: {tuple(image.shape)}, {tuple(masks.shape)}"
        )
    if out_size < 1:
        raise ValueError(f"crop size must be positive, got {out_size}")
    boxes, valid = simple_baseline_boxes(masks, expand_ratio)
    image = image.float()
    # The official fill, CLIP's mean colour on the 0-255 scale, normalised like the image: 0 up to rounding.
    clip_mean, clip_std = region_encoder.CLIP_PIXEL_MEAN, region_encoder.CLIP_PIXEL_STD
    mean = torch.tensor(clip_mean, device=image.device) * 255.0
    std = torch.tensor(clip_std, device=image.device) * 255.0
    fill = (torch.tensor([255.0 * c for c in clip_mean], device=image.device) - mean) / std
    crops = image.new_zeros(len(masks), 3, out_size, out_size)
    kept = valid.nonzero().squeeze(1)
    if len(kept) == 0:
        return crops, valid
    if not (image.is_cuda if batched is None else batched):
        crops[kept] = _resample_per_box(image, masks[kept], fill, boxes[kept], out_size)
        return crops, valid
    heights = boxes[kept, 3] - boxes[kept, 1]
    for chunk in _height_chunks(heights, out_size):
        idx = kept[chunk]
        crops[idx] = _resample_chunk(image, masks[idx], fill, boxes[idx], out_size)
    return crops, valid
