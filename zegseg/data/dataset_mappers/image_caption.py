"""Training mapper for image–caption records (:mod:`zegseg.data.datasets.register_captions`): no labels."""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["ImageCaptionDatasetMapper"]

logger = logging.getLogger(__name__)


class ImageCaptionDatasetMapper:
    """Read an image, augment it, and draw one of its captions.

    Output dict: the record's fields plus
        "image": (3, H, W) uint8 tensor in ``image_format``;
        "caption": one of the record's "captions", drawn uniformly each time the record is mapped;
        "height", "width": size of the original image.

    Augmentations (INPUT.*): shortest-edge resize, an optional random crop (INPUT.CROP), an optional flip. Crops
    and flips can make a caption wrong ("on the left", a cropped-out object); TCL trains with random resized
    crops anyway. The toy world's configuration uses neither.
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str, seed: int = 0):
        """
        Args:
            augmentations: applied in order to the image.
            image_format: detectron2 image format, e.g. "BGR" or "RGB".
            seed: seed of the caption draws (each data-loader worker holds its own copy of the generator).
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self._rng = np.random.default_rng(seed)
        logger.info("Training augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if not is_train:
            raise ValueError("image_caption is a training mapper; evaluation uses detectron2's DatasetMapper")
        augs: List[T.Augmentation] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        ]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        if cfg.INPUT.RANDOM_FLIP != "none":
            augs.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"
                )
            )
        return {"augmentations": augs, "image_format": cfg.INPUT.FORMAT, "seed": cfg.SEED}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        captions = dataset_dict.get("captions")
        if not captions:
            raise ValueError(f"record of {dataset_dict.get('file_name')} has no 'captions': is it a caption dataset?")
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict["caption"] = captions[int(self._rng.integers(len(captions)))]
        return dataset_dict
