"""Training records with one ground-truth segment each, for learning prompts on segment crops.

A semantic-segmentation record (an image and its label file) becomes one record per class present in the label
(``"category_id"`` added), the simple baseline's "classification" datasets. With ``SAMPLE_PER_CLASS = N > 0``
the simple baseline's few-shot draw follows: for each class, in the order the classes first appear in the
records, N records are drawn with replacement from that class's records by one ``numpy.random.default_rng(seed)``
(a class with fewer than N records keeps them all). The draw therefore repeats the official one exactly when the
records and their order (sorted file names) are the same.

Which classes a label file holds is read once and cached (JSON under ``$ZEGSEG_CACHE_DIR/label_classes`` or
``~/.cache/zegseg/label_classes``, keyed by the label files' paths, sizes and modification times).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets.common import read_label, run_parallel, write_bytes

__all__ = ["SEGMENT_MAPPERS", "build_train_dataset", "label_classes", "sample_per_class", "segment_records"]

logger = logging.getLogger(__name__)

SEGMENT_MAPPERS = ("segment_crop",)
"""Training mappers (INPUT.DATASET_MAPPER_NAME) that take one-segment records."""


def _default_cache_dir() -> Path:
    return Path(os.environ.get("ZEGSEG_CACHE_DIR", Path.home() / ".cache" / "zegseg")) / "label_classes"


def _classes_of(path: str) -> List[int]:
    """Sorted label values present in one label file (the ignore value included)."""
    return np.unique(read_label(path)).tolist()


def label_classes(
    label_files: Sequence[str], *, workers: int = 1, cache_dir: Optional[Path] = None
) -> Dict[str, List[int]]:
    """The label values present in each label file, read in parallel and cached on disk.

    Args:
        label_files: paths of single-channel label images.
        workers: processes reading the files on a cache miss.
        cache_dir: where the cache lives (default ``$ZEGSEG_CACHE_DIR/label_classes``).
    Returns:
        ``{path: sorted values}`` (the ignore value included when present).
    """
    files = list(label_files)
    digest = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = Path(cache_dir or _default_cache_dir()) / f"{digest.hexdigest()[:32]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    values = run_parallel(_classes_of, files, workers=workers, desc="classes per label file")
    result = dict(zip(files, values))
    write_bytes(cache, json.dumps(result).encode())
    logger.info("Classes of %d label files cached in %s", len(files), cache)
    return result


def segment_records(records: Sequence[Dict], ignore_label: int, **kwargs) -> List[Dict]:
    """One record per (image, class present in its label), in record order and then class order.

    Args:
        records: semantic-segmentation records with "sem_seg_file_name".
        ignore_label: the label value of unlabelled pixels (never a segment).
        kwargs: passed to :func:`label_classes` (``workers``, ``cache_dir``).
    Returns:
        copies of the records with "category_id" added.
    """
    present = label_classes([r["sem_seg_file_name"] for r in records], **kwargs)
    return [
        {**r, "category_id": int(c)}
        for r in records
        for c in present[r["sem_seg_file_name"]]
        if c != ignore_label
    ]


def sample_per_class(records: Sequence[Dict], per_class: int, seed: int) -> List[Dict]:
    """The simple baseline's draw: ``per_class`` records per class, with replacement (module docstring).

    Args:
        records: one-segment records ("category_id").
        per_class: records per class; <= 0 returns ``records`` unchanged.
        seed: seed of ``numpy.random.default_rng``.
    Returns:
        the drawn records, grouped by class in first-appearance order.
    """
    if per_class <= 0:
        return list(records)
    groups: Dict[int, List[Dict]] = {}  # insertion order: first appearance
    for r in records:
        groups.setdefault(r["category_id"], []).append(r)
    rng = np.random.default_rng(seed)
    drawn: List[Dict] = []
    for group in groups.values():
        if len(group) < per_class:
            drawn.extend(group)
        else:
            drawn.extend(group[i] for i in rng.choice(len(group), size=per_class))
    return drawn


def build_train_dataset(cfg: CfgNode) -> Optional[List[Dict]]:
    """The training records for the mapper INPUT.DATASET_MAPPER_NAME.

    One-segment mappers (:data:`SEGMENT_MAPPERS`) get the segment records of DATASETS.TRAIN drawn by
    DATASETS.SAMPLE_PER_CLASS / SAMPLE_SEED; every other mapper gets ``None`` (detectron2 then loads
    DATASETS.TRAIN as it is).
    """
    if cfg.INPUT.DATASET_MAPPER_NAME not in SEGMENT_MAPPERS:
        return None
    records: List[Dict] = []
    for name in cfg.DATASETS.TRAIN:
        ignore = MetadataCatalog.get(name).get("ignore_label", None)
        if ignore is None:
            raise ValueError(f"training dataset {name!r} has no 'ignore_label' metadata; is it registered?")
        records += segment_records(DatasetCatalog.get(name), int(ignore), workers=max(cfg.DATALOADER.NUM_WORKERS, 1))
    drawn = sample_per_class(records, cfg.DATASETS.SAMPLE_PER_CLASS, cfg.DATASETS.SAMPLE_SEED)
    if not drawn:
        raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} holds no labelled segment")
    logger.info(
        "%d one-segment training records (%d classes) from %d segments",
        len(drawn), len({r["category_id"] for r in drawn}), len(records),
    )
    return drawn
