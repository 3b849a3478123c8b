"""Datasets (registered on import), training mappers and label-file helpers."""
from . import datasets  # noqa: F401  (registers every built-in dataset)
from .dataset_mappers import MAPPERS, MaskFormerSemanticDatasetMapper, build_train_mapper
from .datasets.common import dataset_root, load_class_list, read_label

__all__ = [
    "MAPPERS",
    "MaskFormerSemanticDatasetMapper",
    "build_train_mapper",
    "dataset_root",
    "load_class_list",
    "read_label",
]
