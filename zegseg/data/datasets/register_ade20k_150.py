"""ADE20K SceneParsing (ADEChallengeData2016, 150 classes), validation set: a cross-dataset test without a
seen/unseen split (metadata has no ``unseen_classes``: every class counts as unseen).

Files under ``$DETECTRON2_DATASETS`` (labels written by ``datasets/prepare_ade20k_150.py``)::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations_detectron2/validation/*.png    150 classes; "other" (0) becomes 255
"""
from __future__ import annotations

from typing import Optional

from .common import DatasetSpec, PathLike, register_specs

__all__ = ["ADE20K_150_SPECS", "PREPARE_HINT", "register_ade20k_150"]

PREPARE_HINT = "python datasets/prepare_ade20k_150.py"
_ADE = "ADEChallengeData2016"

ADE20K_150_SPECS = (
    DatasetSpec("ade20k_150_val_sem_seg", "validation", f"{_ADE}/images/validation",
                f"{_ADE}/annotations_detectron2/validation", "ade20k_150"),
)


def register_ade20k_150(root: Optional[PathLike] = None) -> None:
    """(Re-)register ADE20K-150 with files under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    register_specs(ADE20K_150_SPECS, root, prepare_hint=PREPARE_HINT)


register_ade20k_150()
