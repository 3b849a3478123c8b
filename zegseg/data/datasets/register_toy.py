"""Registration of the embedded toy world (:mod:`zegseg.data.toy`) as detectron2 semantic-segmentation datasets.

- ``toy_train_seen_sem_seg``: training images, labels over the seen classes only (unseen pixels ignored).
- ``toy_train_all_sem_seg``: training images, labels over all classes (reference / oracle).
- ``toy_val_all_sem_seg``: validation images, labels over all classes; ``unseen_classes`` marks the held-out ones.

The world is generated on first use (about half a minute) when its files are missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from ..toy import default_dataset_root, ensure_toy_world, load_world

__all__ = ["TOY_DATASETS", "register_all_toy"]

# name -> (image split, label folder, class set)
TOY_DATASETS: Dict[str, tuple] = {
    "toy_train_seen_sem_seg": ("train", "labels_seen", "seen"),
    "toy_train_all_sem_seg": ("train", "labels_all", "all"),
    "toy_val_all_sem_seg": ("val", "labels_all", "all"),
}


def _load_toy(root: Path, world_file: Optional[Path], split: str, label_dir: str) -> List[dict]:
    toy = ensure_toy_world(root, world_file)
    size = json.loads((toy / "manifest.json").read_text())["image_size"]
    records = load_sem_seg(str(toy / label_dir / split), str(toy / "images" / split), gt_ext="png", image_ext="png")
    for record in records:
        record["height"] = record["width"] = size
    return records


def register_all_toy(
    root: Optional[Union[str, os.PathLike]] = None,
    world_file: Optional[Union[str, os.PathLike]] = None,
    prefix: str = "",
) -> None:
    """Register the toy datasets under ``root/toy`` as ``prefix + name`` for each name in :data:`TOY_DATASETS`."""
    root = Path(root) if root is not None else default_dataset_root()
    world_file = Path(world_file) if world_file is not None else None
    world = load_world(world_file)
    toy = root / "toy"
    for name, (split, label_dir, class_set) in TOY_DATASETS.items():
        full_name = prefix + name
        DatasetCatalog.register(
            full_name, lambda s=split, d=label_dir: _load_toy(root, world_file, s, d)
        )
        classes = world.seen_classes if class_set == "seen" else world.classes
        extra = {"unseen_classes": list(world.unseen)} if class_set == "all" else {}
        MetadataCatalog.get(full_name).set(
            stuff_classes=classes,
            image_root=str(toy / "images" / split),
            sem_seg_root=str(toy / label_dir / split),
            evaluator_type="gzs_sem_seg",
            ignore_label=255,
            **extra,
        )


register_all_toy()
