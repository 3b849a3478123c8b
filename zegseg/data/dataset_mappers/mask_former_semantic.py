"""Training mapper for semantic segmentation with mask classification: one binary mask per class present."""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import Instances
from torch.nn import functional as F

from ..datasets.common import read_label

__all__ = ["PAD_VALUE", "MaskFormerSemanticDatasetMapper"]

PAD_VALUE = 128
"""Grey that training images are padded with (the official MaskFormer, ZegFormer and simple-baseline mappers')."""

logger = logging.getLogger(__name__)


def _train_ignore_label(dataset_names: Sequence[str]) -> int:
    """The one ``ignore_label`` shared by the training datasets (255, or 65535 for 16-bit label sets)."""
    if not dataset_names:
        raise ValueError("DATASETS.TRAIN is empty: the training mapper needs a training dataset")
    labels = set()
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "ignore_label"):
            raise ValueError(f"training dataset {name!r} has no 'ignore_label' metadata; is it registered?")
        labels.add(int(meta.ignore_label))
    if len(labels) > 1:
        raise ValueError(f"training datasets {list(dataset_names)} mix ignore labels {sorted(labels)}")
    return labels.pop()


class MaskFormerSemanticDatasetMapper:
    """Map a detectron2 semantic-segmentation record to training tensors with per-class binary masks.

    Reads the image (in ``image_format``) and its label file (8-bit or 16-bit PNG), applies the augmentations
    jointly, pads to ``size_divisibility`` (image with :data:`PAD_VALUE`, label with ``ignore_label``), and splits
    the label into one mask per class present.

    Output dict: the record's fields plus
        "image": (3, H, W) uint8 tensor in ``image_format``;
        "sem_seg": (H, W) int64 tensor, class ids with ``ignore_label`` (the dataset's: 255 or 65535);
        "instances": Instances of size (H, W) with ``gt_classes`` (G,) int64 (sorted, distinct) and
            ``gt_masks`` (G, H, W) bool, ``gt_masks[g] == (sem_seg == gt_classes[g])``;
        "height", "width": size of the original image.
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int = 0,
    ):
        """
        Args:
            augmentations: applied in order to image and label (see :meth:`from_config` for the defaults).
            image_format: detectron2 image format, e.g. "BGR" or "RGB".
            ignore_label: label value of pixels without a class.
            size_divisibility: pad bottom/right to a multiple of this; <= 0 disables padding.
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logger.info("Training augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if not is_train:
            raise ValueError("mask_former_semantic is a training mapper; evaluation uses detectron2's DatasetMapper")
        ignore_label = _train_ignore_label(cfg.DATASETS.TRAIN)
        augs: List[T.Augmentation] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        ]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, ignore_label
                )
            )
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
        if cfg.INPUT.RANDOM_FLIP != "none":
            augs.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"
                )
            )
        return {
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        if label_file is None:
            raise ValueError(f"record of {dataset_dict['file_name']} has no 'sem_seg_file_name'")
        label = read_label(label_file)
        if label.shape != image.shape[:2]:
            raise ValueError(f"label {label_file} is {label.shape}, its image {dataset_dict['file_name']} "
                             f"{image.shape[:2]}")
        # PIL resizes only 8-bit arrays and torch's nearest resize rejects integer tensors: 16-bit labels go
        # through float32, which holds every uint16 value exactly.
        if label.dtype != np.uint8:
            label = label.astype(np.float32)

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))

        if self.size_divisibility > 0:
            h, w = sem_seg.shape
            pad_h, pad_w = -h % self.size_divisibility, -w % self.size_divisibility
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=PAD_VALUE)
            sem_seg = F.pad(sem_seg, (0, pad_w, 0, pad_h), value=self.ignore_label)

        classes = torch.unique(sem_seg)
        classes = classes[classes != self.ignore_label]
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes
        instances.gt_masks = sem_seg[None] == classes[:, None, None]

        dataset_dict["image"] = image_t
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = instances
        return dataset_dict
