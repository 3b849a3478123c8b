"""Image–caption datasets, for models trained on captions only (TCL).

A caption dataset is a JSON file and an image folder, in one of two formats:

* **mapping** (the toy world's ``captions/{train,val}.json``; CC3M / CC12M once unpacked)::

      {"<image file, relative to image_root>": "a caption", "<another image>": ["caption 1", "caption 2"]}

  A key without a file extension gets ``image_ext`` appended (the toy world's keys are stems, "00042").
* **COCO captions** (``coco/annotations/captions_train2017.json``): ``{"images": [{"id", "file_name", ...}],
  "annotations": [{"image_id", "caption"}, ...]}``.

Each record is ``{"file_name", "image_id", "captions": [str, ...]}`` (plus "height"/"width" when known); the
training mapper ``image_caption`` draws one caption per image each time the image is read.

Registered here: ``toy_train_captions`` and ``toy_val_captions`` (the toy world's), and
``coco_2017_train_captions`` (COCO 2017 captions, the COCO-Stuff training images; files under
``$DETECTRON2_DATASETS/coco``). Register your own with :func:`register_caption_dataset`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..toy import default_dataset_root, ensure_toy_world
from .common import PathLike, dataset_root

__all__ = ["load_caption_json", "register_caption_dataset", "register_toy_captions"]

logger = logging.getLogger(__name__)


def _check_captions(key: str, value: Union[str, List[str]], json_file: PathLike) -> List[str]:
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{json_file}: image {key!r} needs a non-empty caption or list of captions, got {value!r}")
    return [c.strip() for c in captions]


def load_caption_json(json_file: PathLike, image_root: PathLike, image_ext: str = ".jpg") -> List[Dict]:
    """Read a caption file (mapping or COCO-captions format, see the module docstring) into records.

    Args:
        json_file: the caption JSON.
        image_root: folder the image file names are relative to.
        image_ext: extension appended to mapping keys that have none (e.g. ".png" for the toy world).
    Returns:
        records ``{"file_name", "image_id", "captions"}`` (+ "height", "width" from COCO files), sorted by file.
    Raises:
        FileNotFoundError: the JSON file is missing.
        ValueError: the JSON is neither format, or an image has no caption.
    """
    path = Path(json_file)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))
    root = Path(image_root)
    records: List[Dict] = []
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        captions: Dict[int, List[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        for image in data["images"]:
            if image["id"] not in captions:
                continue
            record = {
                "file_name": str(root / image["file_name"]),
                "image_id": image["id"],
                "captions": _check_captions(image["file_name"], captions[image["id"]], path),
            }
            record.update({k: image[k] for k in ("height", "width") if k in image})
            records.append(record)
    elif isinstance(data, dict):
        for key, value in data.items():
            name = key if os.path.splitext(key)[1] else key + image_ext
            records.append(
                {"file_name": str(root / name), "image_id": key, "captions": _check_captions(key, value, path)}
            )
    else:
        raise ValueError(
            f"{path}: expected a JSON object mapping image files to captions, or COCO captions "
            "('images' and 'annotations')"
        )
    if not records:
        raise ValueError(f"{path} holds no captioned image")
    return sorted(records, key=lambda r: r["file_name"])


def register_caption_dataset(
    name: str,
    json_file: PathLike,
    image_root: PathLike,
    image_ext: str = ".jpg",
    *,
    before_load: Optional[Callable[[], object]] = None,
) -> None:
    """Register an image–caption dataset as ``name`` (records from :func:`load_caption_json`, read lazily).

    Args:
        name: the DatasetCatalog name.
        json_file, image_root, image_ext: see :func:`load_caption_json`.
        before_load: called before reading the file (e.g. to generate it).
    """

    def load() -> List[Dict]:
        if before_load is not None:
            before_load()
        return load_caption_json(json_file, image_root, image_ext)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root), dataset_type="captions")


def register_toy_captions(root: Optional[PathLike] = None, world_file: Optional[PathLike] = None) -> None:
    """Register ``toy_{train,val}_captions``: the toy world's images with their one caption each."""
    root = Path(root) if root is not None else default_dataset_root()
    toy = root / "toy"
    for split in ("train", "val"):
        register_caption_dataset(
            f"toy_{split}_captions",
            toy / "captions" / f"{split}.json",
            toy / "images" / split,
            image_ext=".png",
            before_load=lambda: ensure_toy_world(root, world_file),
        )


register_toy_captions()
register_caption_dataset(
    "coco_2017_train_captions",
    Path(dataset_root()) / "coco" / "annotations" / "captions_train2017.json",
    Path(dataset_root()) / "coco" / "train2017",
)
