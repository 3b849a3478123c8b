"""Evaluators, picked per dataset by its metadata ``evaluator_type``."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from .gzs_evaluator import GZSSemSegEvaluator, confusion_matrix, sem_seg_metrics

__all__ = ["EVALUATORS", "GZSSemSegEvaluator", "build_evaluator", "confusion_matrix", "sem_seg_metrics"]

# metadata evaluator_type -> evaluator class, built as cls(dataset_name, distributed=True, output_dir=...)
EVALUATORS: Dict[str, Callable[..., DatasetEvaluator]] = {
    "gzs_sem_seg": GZSSemSegEvaluator,
    "sem_seg": GZSSemSegEvaluator,  # detectron2's built-in semantic-segmentation datasets
}


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``, chosen by its ``evaluator_type``; results go to ``output_folder``
    (default ``cfg.OUTPUT_DIR/inference/<dataset_name>``).

    Raises:
        ValueError: the dataset has no ``evaluator_type`` or one not in :data:`EVALUATORS`.
    """
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type is None:
        raise ValueError(f"dataset {dataset_name!r} has no 'evaluator_type' metadata; is it registered?")
    if evaluator_type not in EVALUATORS:
        raise ValueError(f"unknown evaluator_type {evaluator_type!r} of {dataset_name!r}; known: "
                         f"{', '.join(sorted(EVALUATORS))}")
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return EVALUATORS[evaluator_type](dataset_name, distributed=True, output_dir=output_folder)
