"""ADE20K-Full (ADE20K_2021_17_01): 847 classes and ZegFormer's frequency split (frequent + common classes
seen: 572; rare classes unseen: 275).

With more than 254 classes the labels are 16-bit PNGs and the ignore value is 65535 (metadata
``ignore_label``). Files under ``$DETECTRON2_DATASETS`` (written by ``datasets/prepare_ade20k_full.py``)::

    ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg    images, shorter side at most 512
    ADE20K_2021_17_01/annotations_detectron2/training_seen/*.png       572 seen classes; others 65535
    ADE20K_2021_17_01/annotations_detectron2/validation_all/*.png      847 classes; unlabeled 65535
"""
from __future__ import annotations

from typing import Optional

from .common import DatasetSpec, PathLike, register_specs

__all__ = ["ADE20K_FULL_SPECS", "PREPARE_HINT", "register_ade20k_full"]

PREPARE_HINT = "python datasets/prepare_ade20k_full.py"
_ADE = "ADE20K_2021_17_01"

ADE20K_FULL_SPECS = (
    DatasetSpec("ade20k_full_train_seen_sem_seg", "training", f"{_ADE}/images_detectron2/training",
                f"{_ADE}/annotations_detectron2/training_seen", "ade20k_full", seen_only=True),
    DatasetSpec("ade20k_full_val_all_sem_seg", "validation", f"{_ADE}/images_detectron2/validation",
                f"{_ADE}/annotations_detectron2/validation_all", "ade20k_full"),
)


def register_ade20k_full(root: Optional[PathLike] = None) -> None:
    """(Re-)register the ADE20K-Full datasets with files under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    register_specs(ADE20K_FULL_SPECS, root, prepare_hint=PREPARE_HINT)


register_ade20k_full()
