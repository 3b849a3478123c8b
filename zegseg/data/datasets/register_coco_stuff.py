"""COCO-Stuff 164k: 171 classes (80 things + 91 stuff) and SPNet's zero-shot split (156 seen, 15 unseen).

Files under ``$DETECTRON2_DATASETS`` (labels written by ``datasets/prepare_coco_stuff.py``)::

    coco/train2017/*.jpg, coco/val2017/*.jpg                  COCO 2017 images
    coco/stuffthingmaps_detectron2/train2017_all/*.png        171 classes, ids in class-list order, 255 ignore
    coco/stuffthingmaps_detectron2/train2017_seen/*.png       156 seen classes; unseen pixels are 255
    coco/stuffthingmaps_detectron2/val2017_all/*.png          171 classes
"""
from __future__ import annotations

from typing import Optional

from .common import DatasetSpec, PathLike, register_specs

__all__ = ["COCO_STUFF_SPECS", "PREPARE_HINT", "register_coco_stuff"]

PREPARE_HINT = "python datasets/prepare_coco_stuff.py"
_LABELS = "coco/stuffthingmaps_detectron2"

COCO_STUFF_SPECS = (
    DatasetSpec("coco_stuff_train_seen_sem_seg", "train2017", "coco/train2017", f"{_LABELS}/train2017_seen",
                "coco_stuff", seen_only=True),
    DatasetSpec("coco_stuff_train_all_sem_seg", "train2017", "coco/train2017", f"{_LABELS}/train2017_all",
                "coco_stuff"),
    DatasetSpec("coco_stuff_val_all_sem_seg", "val2017", "coco/val2017", f"{_LABELS}/val2017_all", "coco_stuff"),
)


def register_coco_stuff(root: Optional[PathLike] = None) -> None:
    """(Re-)register the COCO-Stuff datasets with files under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    register_specs(COCO_STUFF_SPECS, root, prepare_hint=PREPARE_HINT)


register_coco_stuff()
