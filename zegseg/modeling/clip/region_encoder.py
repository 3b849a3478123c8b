"""CLIP's view of image regions: one sub-image per mask, built for all masks at once, and classified by CLIP.

Crop styles (per mask):

* ``cropmask``: crop to the mask's (expanded) box and paint the pixels outside the mask with CLIP's mean colour;
* ``mask``: the whole image, outside-mask pixels painted with the mean colour;
* ``crop``: the box crop, unpainted.

Each sub-image is resampled to CLIP's input size (``clip_model.visual.input_resolution``) with
``torchvision.ops.roi_align``, which takes all boxes of an image in one call. A mask with no pixels gets the
whole-image box and ``valid = False``.

Images here are in CLIP's normalised RGB space ((x / 255 - mean) / std), where the mean colour is exactly 0;
:func:`normalize_for_clip` converts detectron2's 0-255 input images (BGR or RGB) into it.
"""

from __future__ import annotations

from typing import Tuple

import torch
from detectron2.config import configurable
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import roi_align

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "CROP_STYLES",
    "RegionCLIPClassifier",
    "expand_boxes",
    "make_region_crops",
    "masks_to_boxes",
    "normalize_for_clip",
]

CLIP_PIXEL_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel mean, RGB, for images scaled to [0, 1]."""
CLIP_PIXEL_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel standard deviation, RGB, for images scaled to [0, 1]."""
CROP_STYLES = ("cropmask", "mask", "crop")


def normalize_for_clip(image: Tensor, input_format: str = "BGR") -> Tensor:
    """Convert 0-255 images to CLIP's normalised RGB space.

    Args:
        image: (..., 3, H, W) uint8 or float in 0-255, channels in ``input_format`` order.
        input_format: "BGR" or "RGB" (detectron2's ``cfg.INPUT.FORMAT``).
    Returns:
        (..., 3, H, W) float32, RGB, ``(x / 255 - mean) / std``.
    """
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"unknown input format {input_format!r}; known: BGR, RGB")
    if image.shape[-3] != 3:
        raise ValueError(f"expected a 3-channel image (..., 3, H, W), got shape {tuple(image.shape)}")
    image = image.float()
    if input_format == "BGR":
        image = image.flip(-3)
    mean = torch.tensor(CLIP_PIXEL_MEAN, device=image.device).view(3, 1, 1) * 255.0
    std = torch.tensor(CLIP_PIXEL_STD, device=image.device).view(3, 1, 1) * 255.0
    return (image - mean) / std


def masks_to_boxes(masks: Tensor) -> Tuple[Tensor, Tensor]:
    """Tight boxes of binary masks, vectorised.

    Args:
        masks: (Q, H, W) bool.
    Returns:
        boxes: (Q, 4) float ``(x1, y1, x2, y2)`` in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``, so
            ``x2``/``y2`` are exclusive); a mask with no pixels gets the whole image ``(0, 0, W, H)``.
        valid: (Q,) bool, False for masks with no pixels.
    """
    _, h, w = masks.shape
    rows = masks.any(dim=2)  # (Q, H)
    cols = masks.any(dim=1)  # (Q, W)
    valid = rows.any(dim=1)
    rows, cols = rows.to(torch.uint8), cols.to(torch.uint8)  # argmax finds the first True
    y1 = rows.argmax(dim=1)
    y2 = h - rows.flip(1).argmax(dim=1)
    x1 = cols.argmax(dim=1)
    x2 = w - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    whole = torch.tensor([0.0, 0.0, w, h], device=masks.device)
    return torch.where(valid[:, None], boxes, whole), valid


def expand_boxes(boxes: Tensor, ratio: float, height: int, width: int) -> Tensor:
    """Scale boxes about their centres by ``ratio`` and clamp them to the image.

    Args:
        boxes: (Q, 4) ``(x1, y1, x2, y2)``.
    Returns:
        (Q, 4) float boxes inside ``[0, width] x [0, height]``.
    """
    if ratio <= 0:
        raise ValueError(f"box expand ratio must be positive, got {ratio}")
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (ratio / 2)
    limit = boxes.new_tensor([width, height])
    low = torch.minimum(torch.clamp(centre - half, min=0), limit)
    high = torch.maximum(torch.minimum(centre + half, limit), low)
    return torch.cat([low, high], dim=1)


def make_region_crops(
    image: Tensor,
    masks: Tensor,
    *,
    style: str = "cropmask",
    out_size: int,
    expand_ratio: float = 1.0,
    sampling_ratio: int = 2,
) -> Tuple[Tensor, Tensor]:
    """One CLIP-sized sub-image per mask, for all masks in one ``roi_align`` call.

    Args:
        image: (3, H, W) float in CLIP's normalised space (see :func:`normalize_for_clip`; 0 is the mean colour).
        masks: (Q, H, W) bool.
        style: "cropmask" | "mask" | "crop" (see the module docstring).
        out_size: side S of the square outputs (``clip_model.visual.input_resolution``).
        expand_ratio: box scale before cropping ("cropmask", "crop").
        sampling_ratio: ``roi_align`` samples per output pixel and axis.
    Returns:
        crops: (Q, 3, S, S) float, same space as ``image``; painted pixels are 0 (the mean colour).
        valid: (Q,) bool, False where the mask is empty (its crop uses the whole-image box).
    """
    if style not in CROP_STYLES:
        raise ValueError(f"unknown crop style {style!r}; known: {', '.join(CROP_STYLES)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool (Q, H, W), got {masks.dtype}")
    if image.ndim != 3 or masks.ndim != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image (3, H, W) and masks (Q, H, W) must share H, W: {tuple(image.shape)}, {tuple(masks.shape)}"
        )
    num, h, w = masks.shape
    boxes, valid = masks_to_boxes(masks)
    if style == "mask":
        boxes = boxes.new_tensor([0.0, 0.0, w, h]).expand(num, 4)
    elif expand_ratio != 1.0:
        boxes = expand_boxes(boxes, expand_ratio, h, w)
    image = image.float()
    zeros = boxes.new_zeros(num, 1)
    crops = roi_align(
        image[None], torch.cat([zeros, boxes], dim=1), out_size, sampling_ratio=sampling_ratio, aligned=True
    )
    if style != "crop":
        own = torch.arange(num, device=boxes.device, dtype=boxes.dtype)[:, None]
        alpha = roi_align(
            masks[:, None].to(image.dtype),
            torch.cat([own, boxes], dim=1),
            out_size,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )
        crops = crops * alpha  # blend towards 0, CLIP's mean colour
    return crops, valid


class RegionCLIPClassifier(nn.Module):
    """Classifies image regions (masks) with the frozen CLIP image encoder.

    Holds only options; the CLIP model is an argument of :meth:`encode` / :meth:`forward`, so it is owned (and
    kept out of checkpoints) by the meta-architecture. Runs without gradients, all crops of an image in chunks of
    ``chunk_size``, under autocast on CUDA only.
    """

    @configurable
    def __init__(
        self,
        *,
        style: str = "cropmask",
        expand_ratio: float = 1.0,
        mask_threshold: float = 0.5,
        chunk_size: int = 32,
        logit_scale: float = 100.0,
        input_format: str = "BGR",
        amp: bool = True,
    ):
        """
        Args:
            style: crop style, "cropmask" | "mask" | "crop".
            expand_ratio: scale of each mask's box before cropping.
            mask_threshold: float mask logits are binarised as ``sigmoid(logit) > mask_threshold``.
            chunk_size: crops per image-encoder pass.
            logit_scale: logits are ``logit_scale * cos(region, text)``.
            input_format: channel order of the 0-255 images passed in, "BGR" or "RGB".
            amp: autocast the image encoder when running on CUDA.
        """
        super().__init__()
        if style not in CROP_STYLES:
            raise ValueError(f"unknown crop style {style!r}; known: {', '.join(CROP_STYLES)}")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"unknown input format {input_format!r}; known: BGR, RGB")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.style = style
        self.expand_ratio = expand_ratio
        self.mask_threshold = mask_threshold
        self.chunk_size = chunk_size
        self.logit_scale = logit_scale
        self.input_format = input_format
        self.amp = amp

    @classmethod
    def from_config(cls, cfg):
        return {
            "style": cfg.MODEL.CLIP.CROP_STYLE,
            "expand_ratio": cfg.MODEL.CLIP.CROP_EXPAND_RATIO,
            "mask_threshold": cfg.MODEL.CLIP.MASK_THRESHOLD,
            "chunk_size": cfg.MODEL.CLIP.CHUNK_SIZE,
            "logit_scale": cfg.MODEL.CLIP.LOGIT_SCALE,
            "input_format": cfg.INPUT.FORMAT,
            "amp": cfg.TEST.AMP,
        }

    def binarize(self, masks: Tensor, size: Tuple[int, int]) -> Tensor:
        """(Q, H, W) bool masks pass; (Q, h, w) float logits are resized to ``size``, thresholded → (Q, H, W) bool."""
        if masks.dtype == torch.bool:
            if tuple(masks.shape[-2:]) != tuple(size):
                raise ValueError(
                    f"bool masks of size {tuple(masks.shape[-2:])} do not match the image size {tuple(size)}"
                )
            return masks
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        return masks.sigmoid() > self.mask_threshold

    @torch.no_grad()
    def encode(self, clip_model: nn.Module, image: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """CLIP image embeddings of the regions of one image.

        Args:
            clip_model: frozen OpenAI-format CLIP.
            image: (3, H, W) uint8/float 0-255 in ``input_format`` (a detectron2 input ``"image"``, unpadded).
            masks: (Q, H, W) bool, or (Q, h, w) float mask logits (see :meth:`binarize`).
        Returns:
            embeddings: (Q, D) float32 on CLIP's device, L2-normalised; zero rows where ``valid`` is False (CLIP
                is not run on them).
            valid: (Q,) bool, False for empty masks.
        """
        device = clip_model.text_projection.device
        image = image.to(device)
        masks = self.binarize(masks.to(device), tuple(image.shape[-2:]))
        valid = masks.flatten(1).any(dim=1)
        out = torch.zeros(masks.shape[0], int(clip_model.text_projection.shape[1]), device=device)
        if not bool(valid.any()):
            return out, valid
        crops, _ = make_region_crops(
            normalize_for_clip(image, self.input_format),
            masks[valid],
            style=self.style,
            out_size=int(clip_model.visual.input_resolution),
            expand_ratio=self.expand_ratio,
        )
        with torch.autocast(device_type=device.type, enabled=self.amp and device.type == "cuda"):
            feats = torch.cat([clip_model.encode_image(c).float() for c in crops.split(self.chunk_size)])
        out[valid] = F.normalize(feats, dim=-1)
        return out, valid

    def forward(
        self, clip_model: nn.Module, image: Tensor, masks: Tensor, text_embeddings: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """CLIP logits of the regions of one image against K classes.

        Args:
            clip_model, image, masks: as in :meth:`encode`.
            text_embeddings: (K, D) L2-normalised class embeddings.
        Returns:
            logits: (Q, K) ``logit_scale * cos``; rows of invalid regions are 0 (pass ``valid`` to the ensemble,
                which treats them as neutral).
            valid: (Q,) bool.
        """
        emb, valid = self.encode(clip_model, image, masks)
        return self.logit_scale * emb @ text_embeddings.to(emb).T, valid
