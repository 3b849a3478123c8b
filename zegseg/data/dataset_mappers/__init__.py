"""Dataset mappers: a record from DatasetCatalog in, the model's input dict out. One mapper per file."""
from __future__ import annotations

from typing import Callable, Dict

from detectron2.config import CfgNode

from .image_caption import ImageCaptionDatasetMapper
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .segment_crop import SegmentCropDatasetMapper

__all__ = [
    "MAPPERS",
    "ImageCaptionDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SegmentCropDatasetMapper",
    "build_train_mapper",
]

# INPUT.DATASET_MAPPER_NAME -> mapper class (constructed with ``cls(cfg, is_train=...)``)
MAPPERS: Dict[str, Callable] = {
    "image_caption": ImageCaptionDatasetMapper,  # image–caption records: zegseg.data.datasets.register_captions
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "segment_crop": SegmentCropDatasetMapper,  # one-segment records: zegseg.data.segment_samples
}


def build_train_mapper(cfg: CfgNode, is_train: bool = True) -> Callable:
    """The training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``.

    Raises:
        ValueError: the name is not in :data:`MAPPERS`.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPERS:
        raise ValueError(f"unknown mapper {name!r}; known: {', '.join(sorted(MAPPERS))}")
    return MAPPERS[name](cfg, is_train=is_train)
