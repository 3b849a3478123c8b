"""PASCAL VOC 2012 with SBD augmentation (10,582 train / 1,449 val): 20 classes, background ignored, and
SPNet's zero-shot split (15 seen; pottedplant, sheep, sofa, train, tvmonitor unseen).

Files under ``$DETECTRON2_DATASETS`` (labels written by ``datasets/prepare_voc.py``)::

    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/annotations_detectron2/train_seen/*.png    15 seen classes; unseen and background 255
    VOCdevkit/VOC2012/annotations_detectron2/val_all/*.png       20 classes; background 255
"""
from __future__ import annotations

from typing import Optional

from .common import DatasetSpec, PathLike, register_specs

__all__ = ["PREPARE_HINT", "VOC_SPECS", "register_voc"]

PREPARE_HINT = "python datasets/prepare_voc.py"
_VOC = "VOCdevkit/VOC2012"

VOC_SPECS = (
    DatasetSpec("voc_train_seen_sem_seg", "train", f"{_VOC}/JPEGImages", f"{_VOC}/annotations_detectron2/train_seen",
                "voc", seen_only=True),
    DatasetSpec("voc_val_all_sem_seg", "val", f"{_VOC}/JPEGImages", f"{_VOC}/annotations_detectron2/val_all", "voc"),
)


def register_voc(root: Optional[PathLike] = None) -> None:
    """(Re-)register the VOC datasets with files under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    register_specs(VOC_SPECS, root, prepare_hint=PREPARE_HINT)


register_voc()
