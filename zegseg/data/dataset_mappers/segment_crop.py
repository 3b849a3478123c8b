"""Training mapper for prompt learning: one ground-truth segment per sample, as the simple baseline trains prompts.

A record names an image, its label file and one class (``"category_id"``, see :mod:`zegseg.data.segment_samples`).
The sample is the image cut to that class's box (:class:`CropToSegment`), then a random resized crop of it
(:class:`RandomResizedSegmentCrop`: a random part of 8-100 % of the box's area, aspect ratio 3/4-4/3, resized
bilinearly to INPUT.SEGMENT_CROP.SIZE), then a random flip; its mask is the class's pixels, resampled with the
image (nearest). A sample whose mask the random crop leaves empty is skipped (the mapper returns ``None`` and
detectron2's dataset draws another record).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from ..datasets.common import read_label

__all__ = ["CropToSegment", "RandomResizedSegmentCrop", "SegmentCropDatasetMapper"]

logger = logging.getLogger(__name__)


class CropToSegment(T.Augmentation):
    """Crop to the box of a binary mask, scaled about its centre, as the official code does.

    The box is the mask's tight box (right and bottom exclusive), scaled by ``expand_ratio``; its left and top
    edges are clamped to 0, its right and bottom edges to ``W - 1`` and ``H - 1`` (so a mask that touches the
    right or bottom border loses its last column or row there, as in the official code), sizes truncated to
    integers and at least 1.
    """

    def __init__(self, expand_ratio: float = 1.0):
        super().__init__()
        if expand_ratio <= 0:
            raise ValueError(f"box expand ratio must be positive, got {expand_ratio}")
        self.expand_ratio = expand_ratio

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.Transform:
        """``sem_seg``: (H, W) the segment's binary mask (non-zero inside)."""
        h, w = sem_seg.shape
        ys, xs = np.nonzero(sem_seg)
        if len(ys) == 0:
            raise ValueError("CropToSegment needs a non-empty mask")
        x, y = float(xs.min()), float(ys.min())
        bw, bh = float(xs.max()) + 1 - x, float(ys.max()) + 1 - y
        cx, cy = x + 0.5 * bw, y + 0.5 * bh
        bw, bh = bw * self.expand_ratio, bh * self.expand_ratio
        left, top = max(0.0, cx - 0.5 * bw), max(0.0, cy - 0.5 * bh)
        right, bottom = min(w - 1.0, cx + 0.5 * bw), min(h - 1.0, cy + 0.5 * bh)
        crop_w, crop_h = max(int(right - left), 1), max(int(bottom - top), 1)
        return T.CropTransform(int(left), int(top), crop_w, crop_h, w, h)


class RandomResizedSegmentCrop(T.Augmentation):
    """torchvision's RandomResizedCrop draw (10 tries, then a central crop) as a detectron2 augmentation: crop,
    then bilinear resize to ``size`` (nearest for the mask)."""

    def __init__(
        self,
        size: Tuple[int, int],
        scale: Tuple[float, float] = (0.08, 1.0),
        ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ):
        """
        Args:
            size: (height, width) of the output.
            scale: range of the crop's area as a fraction of the input's.
            ratio: range of the crop's aspect ratio, width / height.
        """
        super().__init__()
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) with positive entries, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"invalid scale {scale} or ratio {ratio}")
        self.size = (int(size[0]), int(size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        top, left, crop_h, crop_w = RandomResizedCrop.get_params(
            torch.empty(1, 1, 1).expand(1, h, w), list(self.scale), list(self.ratio)
        )
        return T.TransformList(
            [
                T.CropTransform(left, top, crop_w, crop_h, w, h),
                T.ResizeTransform(crop_h, crop_w, self.size[0], self.size[1], Image.BILINEAR),
            ]
        )


class SegmentCropDatasetMapper:
    """Map a one-segment record to a training sample for :class:`~zegseg.modeling.meta_arch.PromptLearnerCLIP`.

    Output dict: the record's fields plus
        "image": (3, h, w) uint8 tensor in ``image_format``, (h, w) the augmentations' output size;
        "instances": Instances of size (h, w) with ``gt_classes`` (1,) int64 (the record's "category_id") and
            ``gt_masks`` (1, h, w) bool;
        "segment_sample": True (the image is the segment's crop, not a whole image);
        "height", "width": size of the original image.
    """

    @configurable
    def __init__(self, *, augmentations: Sequence[T.Augmentation], image_format: str):
        """
        Args:
            augmentations: applied in order to the image and the segment's mask; the first receives the mask as
                ``sem_seg`` (see :meth:`from_config` for the defaults).
            image_format: detectron2 image format, e.g. "BGR" or "RGB".
        """
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        logger.info("Segment-sample augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if not is_train:
            raise ValueError("segment_crop is a training mapper; evaluation uses detectron2's DatasetMapper")
        seg = cfg.INPUT.SEGMENT_CROP
        augs: List[T.Augmentation] = [
            CropToSegment(cfg.MODEL.CLIP.CROP_EXPAND_RATIO),
            RandomResizedSegmentCrop(tuple(seg.SIZE), tuple(seg.SCALE), tuple(seg.RATIO)),
        ]
        if cfg.INPUT.RANDOM_FLIP != "none":
            augs.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"
                )
            )
        return {"augmentations": augs, "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        dataset_dict = copy.deepcopy(dataset_dict)
        if "category_id" not in dataset_dict:
            raise ValueError(
                f"record of {dataset_dict.get('file_name')} has no 'category_id': segment_crop takes one-segment "
                "records (zegseg.data.segment_samples.build_train_dataset)"
            )
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name")
        label = read_label(label_file)
        if label.shape != image.shape[:2]:
            raise ValueError(f"label {label_file} is {label.shape}, its image {dataset_dict['file_name']} "
                             f"{image.shape[:2]}")
        category = int(dataset_dict["category_id"])
        mask = (label == category).astype(np.uint8)
        if not mask.any():
            raise ValueError(f"label {label_file} holds no pixel of class {category}")
        aug_input = T.AugInput(image, sem_seg=mask)
        self.augmentations(aug_input)
        mask_t = torch.as_tensor(aug_input.sem_seg.astype(bool))
        if not bool(mask_t.any()):
            return None  # the random crop missed the segment: detectron2 draws another record
        instances = Instances(tuple(mask_t.shape))
        instances.gt_classes = torch.tensor([category], dtype=torch.int64)
        instances.gt_masks = mask_t[None]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict["instances"] = instances
        dataset_dict["segment_sample"] = True
        return dataset_dict
