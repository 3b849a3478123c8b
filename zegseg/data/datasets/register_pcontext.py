"""PASCAL Context validation set (5,105 images of VOC 2010) with 59 or 459 classes: cross-dataset tests
without a seen/unseen split (metadata has no ``unseen_classes``: every class counts as unseen).

PC-459 labels are 16-bit PNGs with ignore 65535 (more than 254 classes); PC-59 labels are 8-bit, ignore 255.
Files under ``$DETECTRON2_DATASETS`` (labels written by ``datasets/prepare_pcontext.py``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png     59 classes; all other pixels 255
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.png    459 classes; unlabeled 65535
"""
from __future__ import annotations

from typing import Optional

from .common import DatasetSpec, PathLike, register_specs

__all__ = ["PCONTEXT_SPECS", "PREPARE_HINT", "register_pcontext"]

PREPARE_HINT = "python datasets/prepare_pcontext.py"
_VOC = "VOCdevkit/VOC2010"

PCONTEXT_SPECS = (
    DatasetSpec("pcontext_59_val_sem_seg", "val", f"{_VOC}/JPEGImages", f"{_VOC}/annotations_detectron2/pc59_val",
                "pcontext_59"),
    DatasetSpec("pcontext_459_val_sem_seg", "val", f"{_VOC}/JPEGImages", f"{_VOC}/annotations_detectron2/pc459_val",
                "pcontext_459"),
)


def register_pcontext(root: Optional[PathLike] = None) -> None:
    """(Re-)register the PASCAL Context datasets with files under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    register_specs(PCONTEXT_SPECS, root, prepare_hint=PREPARE_HINT)


register_pcontext()
