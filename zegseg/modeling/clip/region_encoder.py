"""CLIP's view of image regions: one sub-image per mask, built for many masks at once, and classified by CLIP.

Crop styles (per mask):

* ``cropmask``: crop to the mask's box and paint the pixels outside the mask with CLIP's mean colour;
* ``mask``: the whole image, outside-mask pixels painted with the mean colour;
* ``crop``: the box crop, unpainted.

Crop procedures (how a box becomes a CLIP-sized sub-image; ``MODEL.CLIP.CROP_PROCEDURE``):

* ``zegformer`` (the official ZegFormer code, the default): masks are thresholded at the padded input size, the
  image is masked first, the box of a mask runs from its first to its *last* pixel index (so the last row and
  column fall outside it), and each masked image is resampled by ``roi_align`` (adaptive sampling). A mask whose
  box has no area (empty, or one pixel wide) uses the whole padded image; CLIP always sees something.
* ``roi_align`` (zegseg's variant): tight boxes in pixel-edge coordinates (last pixel included), optionally
  expanded, image and mask resampled separately (two ``roi_align`` calls, two samples per bin) and multiplied;
  empty masks are not cropped (``valid`` False), so CLIP abstains on them.
* ``simple_baseline`` (the official simple-baseline code, ``cropmask`` style only): integer boxes, outside-mask
  pixels given CLIP's mean colour, bicubic resize (:mod:`zegseg.modeling.clip.baseline_crops`); empty masks are
  not cropped (``valid`` False).
The first two take all crops of a chunk of masks in one ``roi_align`` call.

Region modes (``MODEL.CLIP.REGION_MODE``): ``crops`` (the papers') encodes one crop per mask; ``dense`` runs CLIP
once per image (:func:`~zegseg.modeling.clip.dense_features.encode_dense`, MaskCLIP's dense features) and gives each
mask the mean of the dense features under it (mask pooling; each grid cell weighted by the fraction of it the
binarised mask covers). A mask that covers exactly one grid cell gets that cell's dense feature.

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

from . import baseline_crops  # a module reference: baseline_crops imports this module too
from .dense_features import dense_stride, encode_dense

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "CROP_PROCEDURES",
    "CROP_STYLES",
    "REGION_MODES",
    "RegionCLIPClassifier",
    "expand_boxes",
    "make_region_crops",
    "make_zegformer_crops",
    "masks_to_boxes",
    "normalize_for_clip",
    "zegformer_boxes",
]

CLIP_PIXEL_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel mean, RGB, for images scaled to [0, 1]."""
CLIP_PIXEL_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel standard deviation, RGB, for images scaled to [0, 1]."""
CROP_STYLES = ("cropmask", "mask", "crop")
CROP_PROCEDURES = ("zegformer", "roi_align", "simple_baseline")
REGION_MODES = ("crops", "dense")


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


def zegformer_boxes(masks: Tensor) -> Tensor:
    """Boxes of binary masks as the official ZegFormer code draws them, vectorised.

    A box runs from the first to the last pixel index that holds the mask (``x2 = last column``, not one past it),
    so ``roi_align`` leaves the last row and column out. A box with no area (an empty mask, or one a single row or
    column wide) becomes the whole image ``(0, 0, W, H)``.

    Args:
        masks: (Q, H, W) bool.
    Returns:
        (Q, 4) float ``(x1, y1, x2, y2)``.
    """
    _, h, w = masks.shape
    cols = masks.any(dim=1).to(torch.uint8)  # (Q, W)
    rows = masks.any(dim=2).to(torch.uint8)  # (Q, H)
    x1, y1 = cols.argmax(dim=1), rows.argmax(dim=1)
    x2, y2 = w - 1 - cols.flip(1).argmax(dim=1), h - 1 - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    flat = ((x2 - x1) * (y2 - y1) <= 0) | ~cols.any(dim=1).bool()  # no area, or an empty mask
    whole = boxes.new_tensor([0.0, 0.0, w, h])
    return torch.where(flat[:, None], whole, boxes)


def make_zegformer_crops(
    image: Tensor, masks: Tensor, *, style: str = "cropmask", out_size: int, threshold: float = 0.5
) -> Tensor:
    """One CLIP-sized sub-image per mask, by the official ZegFormer procedure (module docstring).

    ``cropmask``: each masked image (the image times the binary mask) is resampled in the mask's
    :func:`zegformer_boxes` box by one ``roi_align`` call (``aligned=True``, adaptive sampling); ``crop``: the same
    boxes on the unmasked image; ``mask``: the image and the mask (its logits, when given) bilinearly resized to
    ``out_size``, the mask thresholded there, and the two multiplied.

    Args:
        image: (3, H, W) float in CLIP's normalised space, the padded network input (padding 0, the mean colour).
        masks: (Q, H, W) over the same padded extent (the official code thresholds masks there): bool, or float
            mask logits (binarised as ``sigmoid > threshold``).
        style: "cropmask" | "mask" | "crop".
        out_size: side S of the square outputs.
        threshold: mask probability threshold for float masks.
    Returns:
        (Q, 3, S, S) float crops (never skipped: an empty mask gives a blank whole-image crop).
    """
    if style not in CROP_STYLES:
        raise ValueError(f"unknown crop style {style!r}; known: {', '.join(CROP_STYLES)}")
    if image.ndim != 3 or masks.ndim != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image (3, H, W) and masks (Q, H, W) must share H, W: {tuple(image.shape)}, {tuple(masks.shape)}"
        )
    image = image.float()
    if style == "mask":
        size = (out_size, out_size)
        small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        resized = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)
        keep = resized > 0.5 if masks.dtype == torch.bool else resized.sigmoid() > threshold
        return small * keep
    if masks.dtype != torch.bool:
        masks = masks.sigmoid() > threshold
    boxes = zegformer_boxes(masks)
    if style == "crop":
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        return roi_align(image[None], rois, out_size, aligned=True)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(image[None] * masks[:, None], rois, out_size, aligned=True)


class RegionCLIPClassifier(nn.Module):
    """Classifies image regions (masks) with the frozen CLIP image encoder.

    Holds only options; the CLIP model is an argument of :meth:`encode` / :meth:`forward`, so it is owned (and
    kept out of checkpoints) by the meta-architecture. Runs without gradients, the crops of an image built and
    encoded in chunks of ``chunk_size`` (``mode`` "crops"), or the image encoded once and its dense features pooled
    under each mask (``mode`` "dense"), under autocast on CUDA only (``amp``).
    """

    @configurable
    def __init__(
        self,
        *,
        mode: str = "crops",
        dense_scale: float = 1.0,
        procedure: str = "zegformer",
        style: str = "cropmask",
        expand_ratio: float = 1.0,
        mask_threshold: float = 0.5,
        chunk_size: int = 32,
        logit_scale: float = 0.0,
        input_format: str = "BGR",
        amp: bool = True,
    ):
        """
        Args:
            mode: "crops" (one CLIP forward per crop) or "dense" (one per image, mask pooling; module docstring).
            dense_scale: "dense" mode: the image is resized by this factor before CLIP (its output grid has one
                cell per ``dense_stride / dense_scale`` input pixels).
            procedure: crop procedure, "zegformer" | "roi_align" | "simple_baseline" (module docstring; "crops").
            style: crop style, "cropmask" | "mask" | "crop".
            expand_ratio: scale of each mask's box before cropping ("roi_align", "simple_baseline").
            mask_threshold: float mask logits are binarised as ``sigmoid(logit) > mask_threshold``.
            chunk_size: crops per image-encoder pass.
            logit_scale: logits are ``logit_scale * cos(region, text)``; <= 0: CLIP's own learned scale,
                ``clip_model.logit_scale.exp()`` (the official code's).
            input_format: channel order of the 0-255 images passed in, "BGR" or "RGB".
            amp: autocast the image encoder when running on CUDA.
        """
        super().__init__()
        if mode not in REGION_MODES:
            raise ValueError(f"unknown region mode {mode!r}; known: {', '.join(REGION_MODES)}")
        if dense_scale <= 0:
            raise ValueError(f"dense_scale must be positive, got {dense_scale}")
        if procedure not in CROP_PROCEDURES:
            raise ValueError(f"unknown crop procedure {procedure!r}; known: {', '.join(CROP_PROCEDURES)}")
        if style not in CROP_STYLES:
            raise ValueError(f"unknown crop style {style!r}; known: {', '.join(CROP_STYLES)}")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"unknown input format {input_format!r}; known: BGR, RGB")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if procedure == "simple_baseline" and style != "cropmask":
            raise ValueError(f"the simple_baseline crop procedure has the cropmask style only, got {style!r}")
        if procedure == "zegformer" and expand_ratio != 1.0:
            raise ValueError("the zegformer crop procedure does not expand boxes: use CROP_EXPAND_RATIO 1.0")
        self.mode = mode
        self.dense_scale = dense_scale
        self.procedure = procedure
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
            "mode": cfg.MODEL.CLIP.REGION_MODE,
            "dense_scale": cfg.MODEL.CLIP.DENSE_SCALE,
            "procedure": cfg.MODEL.CLIP.CROP_PROCEDURE,
            "style": cfg.MODEL.CLIP.CROP_STYLE,
            "expand_ratio": cfg.MODEL.CLIP.CROP_EXPAND_RATIO,
            "mask_threshold": cfg.MODEL.CLIP.MASK_THRESHOLD,
            "chunk_size": cfg.MODEL.CLIP.CHUNK_SIZE,
            "logit_scale": cfg.MODEL.CLIP.LOGIT_SCALE,
            "input_format": cfg.INPUT.FORMAT,
            "amp": cfg.MODEL.CLIP.AMP,
        }

    @property
    def crops_padded_input(self) -> bool:
        """Whether masks are given over the padded network input (the zegformer procedure crops there); then CLIP
        sees every mask, empty ones included."""
        return self.procedure == "zegformer" and self.mode == "crops"

    def scale(self, clip_model: nn.Module) -> float:
        """The multiplier of cosine similarities: ``logit_scale``, or CLIP's own when that is <= 0."""
        if self.logit_scale > 0:
            return self.logit_scale
        return float(clip_model.logit_scale.detach().float().exp())

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

    def _crops(self, image: Tensor, masks: Tensor, out_size: int) -> Tensor:
        """(3, H, W) normalised image, (M, H, W) masks → (M, 3, S, S) crops by :attr:`procedure`."""
        if self.procedure == "zegformer":
            return make_zegformer_crops(
                image, masks, style=self.style, out_size=out_size, threshold=self.mask_threshold
            )
        if self.procedure == "simple_baseline":
            crops, _ = baseline_crops.simple_baseline_crops(
                image, masks, out_size=out_size, expand_ratio=self.expand_ratio
            )
            return crops
        crops, _ = make_region_crops(image, masks, style=self.style, out_size=out_size, expand_ratio=self.expand_ratio)
        return crops

    @torch.no_grad()
    def encode(self, clip_model: nn.Module, image: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """CLIP image embeddings of the regions of one image.

        Args:
            clip_model: frozen OpenAI-format CLIP.
            image: (3, H, W) uint8/float 0-255 in ``input_format`` (a detectron2 input ``"image"``, unpadded).
            masks: (Q, H, W) bool, or (Q, h, w) float mask logits (see :meth:`binarize`). For the "zegformer"
                procedure, float logits that cover at least the image, (Q, H', W') with H' >= H, W' >= W, are
                taken as logits over the padded input: the image is padded with CLIP's mean colour to that extent
                and the logits are thresholded there, as the official code does.
        Returns:
            embeddings: (Q, D) float32 on CLIP's device, L2-normalised; zero rows where ``valid`` is False (CLIP
                is not run on them).
            valid: (Q,) bool, False for masks CLIP did not see (empty masks; never for the "zegformer" procedure
                in "crops" mode).
        """
        device = clip_model.text_projection.device
        image = normalize_for_clip(image.to(device), self.input_format)
        masks = masks.to(device)
        if self.mode == "dense":
            return self._encode_dense(clip_model, image, self.binarize(masks, tuple(image.shape[-2:])))
        h, w = image.shape[-2:]
        ph, pw = masks.shape[-2:]
        if self.crops_padded_input and masks.dtype != torch.bool and ph >= h and pw >= w:
            image = F.pad(image, (0, pw - w, 0, ph - h))
            valid = torch.ones(len(masks), dtype=torch.bool, device=device)
        else:
            masks = self.binarize(masks, (h, w))
            valid = torch.ones_like(masks[:, 0, 0]) if self.crops_padded_input else masks.flatten(1).any(dim=1)
        out = torch.zeros(masks.shape[0], int(clip_model.text_projection.shape[1]), device=device)
        if not bool(valid.any()):
            return out, valid
        send, empty = valid, None
        if self.crops_padded_input:  # every empty mask gets the same crop: encode it once
            flat = masks.flatten(1)  # sigmoid is monotonic: a mask is empty iff its largest logit is below threshold
            seen = flat.any(dim=1) if masks.dtype == torch.bool else flat.amax(dim=1).sigmoid() > self.mask_threshold
            empty = (~seen).nonzero()[:, 0]
            if len(empty) > 1:
                send = valid.clone()
                send[empty[1:]] = False
        res = int(clip_model.visual.input_resolution)
        feats = []
        with torch.autocast(device_type=device.type, enabled=self.amp and device.type == "cuda"):
            for chunk in masks[send].split(self.chunk_size):
                feats.append(clip_model.encode_image(self._crops(image, chunk, res)).float())
        out[send] = F.normalize(torch.cat(feats), dim=-1)
        if empty is not None and len(empty) > 1:
            out[empty[1:]] = out[empty[0]].clone()
        return out, valid

    def _encode_dense(self, clip_model: nn.Module, image: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """(3, H, W) CLIP-normalised image, (Q, H, W) bool masks → (Q, D) mask-pooled dense features,
        L2-normalised (zero rows for empty masks), and (Q,) valid (the masks that are not empty)."""
        h, w = image.shape[-2:]
        weights = masks[None].float()
        if self.dense_scale != 1.0:
            size = (max(1, round(h * self.dense_scale)), max(1, round(w * self.dense_scale)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            weights = F.interpolate(weights, size=size, mode="nearest-exact")  # integer scales: pixels replicated
        stride = dense_stride(clip_model)
        pad = (0, -image.shape[-1] % stride, 0, -image.shape[-2] % stride)
        image, weights = F.pad(image, pad), F.pad(weights, pad)  # padding: CLIP's mean colour, outside every mask
        grid = (image.shape[-2] // stride, image.shape[-1] // stride)
        device = image.device
        with torch.autocast(device_type=device.type, enabled=self.amp and device.type == "cuda"):
            features = encode_dense(clip_model, image[None])[0].float()  # (D, gh, gw)
        weights = F.adaptive_avg_pool2d(weights, grid)[0].flatten(1)  # (Q, gh * gw): covered fraction of each cell
        valid = masks.flatten(1).any(dim=1)
        pooled = weights @ features.flatten(1).T  # (Q, D), the mean up to a positive factor
        return F.normalize(pooled, dim=-1) * valid[:, None], valid

    def forward(
        self, clip_model: nn.Module, image: Tensor, masks: Tensor, text_embeddings: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """CLIP logits of the regions of one image against K classes.

        Args:
            clip_model, image, masks: as in :meth:`encode`.
            text_embeddings: (K, D) L2-normalised class embeddings.
        Returns:
            logits: (Q, K) ``scale · cos`` (see :meth:`scale`); rows of invalid regions are 0 (pass ``valid`` to the
                ensemble, which treats them as neutral).
            valid: (Q,) bool.
        """
        emb, valid = self.encode(clip_model, image, masks)
        return self.scale(clip_model) * emb @ text_embeddings.to(emb).T, valid
