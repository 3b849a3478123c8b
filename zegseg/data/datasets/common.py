"""Helpers shared by the dataset registrations and the ``datasets/prepare_*.py`` scripts.

* where datasets live (``$DETECTRON2_DATASETS``, default ``./datasets``);
* the packaged class lists (``class_names/*.json``: names, raw label ids, seen/unseen splits);
* label files: single-channel PNGs with contiguous ids ``0..K-1``; 8-bit with ignore 255 when ``K <= 254``,
  16-bit with ignore 65535 otherwise (ADE20K-Full, PASCAL Context 459);
* loading (image, label) records and registering a semantic-segmentation dataset;
* running a conversion over many files in parallel, for the prepare scripts.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from tqdm import tqdm

__all__ = [
    "IGNORE_LABEL_8BIT",
    "IGNORE_LABEL_16BIT",
    "ClassList",
    "DatasetSpec",
    "LayoutError",
    "dataset_root",
    "ignore_label_for",
    "label_lut",
    "load_class_list",
    "load_sem_seg_records",
    "read_label",
    "register_sem_seg_dataset",
    "register_specs",
    "require",
    "run_parallel",
    "run_prepare",
    "write_bytes",
    "write_label",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

IGNORE_LABEL_8BIT = 255
IGNORE_LABEL_16BIT = 65535
_MAX_8BIT_CLASSES = 254  # more classes than this are stored in 16-bit label files
_CLASS_NAME_DIR = Path(__file__).with_name("class_names")


def dataset_root() -> str:
    """The root of all datasets: ``$DETECTRON2_DATASETS``, or ``datasets`` (relative to the working directory)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


# ---------------------------------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassList:
    """A dataset's classes in contiguous-id order, their ids in the raw annotation files, and its unseen classes.

    Attributes:
        names: (K,) class names; synonyms of one class are joined by ", ".
        raw_ids: (K,) value of each class in the official annotation files.
        unseen: names of the unseen classes of the zero-shot split; empty where no split is defined.
    """

    names: Tuple[str, ...]
    raw_ids: Tuple[int, ...]
    unseen: Tuple[str, ...] = ()

    @property
    def seen(self) -> Tuple[str, ...]:
        """Names of the seen classes, in contiguous-id order."""
        unseen = set(self.unseen)
        return tuple(n for n in self.names if n not in unseen)

    @property
    def seen_raw_ids(self) -> Tuple[int, ...]:
        """Raw ids of the seen classes, in the order of :attr:`seen`."""
        unseen = set(self.unseen)
        return tuple(i for n, i in zip(self.names, self.raw_ids) if n not in unseen)


@functools.cache
def load_class_list(name: str) -> ClassList:
    """The packaged class list ``class_names/<name>.json`` (e.g. "coco_stuff", "ade20k_full").

    Raises:
        ValueError: no such class list.
    """
    path = _CLASS_NAME_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in _CLASS_NAME_DIR.glob("*.json"))
        raise ValueError(f"unknown class list {name!r}; known: {', '.join(known)}")
    data = json.loads(path.read_text(encoding="utf-8"))
    names = tuple(c["name"] for c in data["classes"])
    raw_ids = tuple(int(c["raw_id"]) for c in data["classes"])
    unseen = tuple(data.get("unseen", ()))
    if len(set(names)) != len(names) or len(set(raw_ids)) != len(raw_ids):
        raise ValueError(f"{path}: class names and raw ids must be unique")
    if not set(unseen) <= set(names):
        raise ValueError(f"{path}: unseen classes not in the class list: {sorted(set(unseen) - set(names))}")
    return ClassList(names=names, raw_ids=raw_ids, unseen=unseen)


def ignore_label_for(num_classes: int) -> int:
    """Ignore value of a label file with ``num_classes`` contiguous ids: 255 (8-bit) or 65535 (16-bit)."""
    if num_classes > IGNORE_LABEL_16BIT:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label file")
    return IGNORE_LABEL_8BIT if num_classes <= _MAX_8BIT_CLASSES else IGNORE_LABEL_16BIT


def label_lut(raw_ids: Sequence[int], size: int) -> np.ndarray:
    """Look-up table from raw annotation values to contiguous ids.

    Args:
        raw_ids: (K,) raw value of each class, in contiguous-id order.
        size: table length; must exceed every raw value that can occur in the annotations.
    Returns:
        (size,) uint8 or uint16 table (dtype from :func:`ignore_label_for`): ``lut[raw_ids[k]] = k``; every other
        entry is the ignore value. Apply as ``lut[raw_label]``.
    """
    ignore = ignore_label_for(len(raw_ids))
    lut = np.full(size, ignore, dtype=np.uint8 if ignore == IGNORE_LABEL_8BIT else np.uint16)
    lut[np.asarray(raw_ids, dtype=np.int64)] = np.arange(len(raw_ids))
    return lut


# ---------------------------------------------------------------------------------------------------------------
# Label files
# ---------------------------------------------------------------------------------------------------------------


def read_label(path: PathLike) -> np.ndarray:
    """Read a single-channel label image (8-bit, 16-bit or palette PNG; palette indices are the labels).

    Returns:
        (H, W) integer array (uint8, uint16 or int32, as stored).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a single-channel integer image.
    """
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel label image, got PIL mode {img.mode!r}")
        label = np.asarray(img)
    if label.ndim != 2:
        raise ValueError(f"{path}: expected an (H, W) label image, got shape {label.shape}")
    return label


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename): an existing output is always complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_label(path: PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 or uint16 label array as a PNG of the same bit depth, atomically."""
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"labels must be (H, W) uint8 or uint16, got {label.dtype} {label.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(label))
    if not ok:
        raise OSError(f"could not encode a PNG for {path}")
    write_bytes(path, buf.tobytes())


# ---------------------------------------------------------------------------------------------------------------
# Records and registration
# ---------------------------------------------------------------------------------------------------------------


def load_sem_seg_records(
    gt_dir: PathLike, image_dir: PathLike, *, prepare_hint: str, gt_ext: str = ".png", image_ext: str = ".jpg"
) -> List[Dict[str, str]]:
    """One record per label file in ``gt_dir``, paired with the image of the same stem in ``image_dir``.

    Unlike detectron2's ``load_sem_seg`` the label directory defines the split, so an image directory shared by
    several splits (VOC's ``JPEGImages``) needs no copies, and a label without its image is an error, not a
    silently dropped sample.

    Returns:
        records ``{"file_name", "sem_seg_file_name"}`` sorted by file name. Mappers add "height"/"width" from
        the decoded image.
    Raises:
        FileNotFoundError: ``gt_dir`` is missing or holds no labels (the message names ``prepare_hint``), or
            some labels have no image.
    """
    gt_dir, image_dir = Path(gt_dir), Path(image_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"label directory {gt_dir} not found; create it with {prepare_hint}")
    stems = sorted(e.name[: -len(gt_ext)] for e in os.scandir(gt_dir) if e.name.endswith(gt_ext) and e.name[0] != ".")
    if not stems:
        raise FileNotFoundError(f"no {gt_ext} labels in {gt_dir}; create them with {prepare_hint}")
    records = [
        {"file_name": str(image_dir / f"{s}{image_ext}"), "sem_seg_file_name": str(gt_dir / f"{s}{gt_ext}")}
        for s in stems
    ]
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(records)} labels in {gt_dir} have no image in {image_dir} (first: {missing[0]})"
        )
    logger.info("Loaded %d images with semantic labels from %s", len(records), gt_dir)
    return records


@dataclass(frozen=True)
class DatasetSpec:
    """One registered semantic-segmentation dataset: name, where its files live, and which classes it labels.

    Attributes:
        name: name in DatasetCatalog / MetadataCatalog.
        split: the official split the files come from ("train2017", "val", "validation", ...); used by the
            prepare scripts to pick their sources.
        image_dir: image directory, relative to the dataset root.
        label_dir: directory of label PNGs with contiguous ids, relative to the dataset root.
        class_list: name of the packaged class list (:func:`load_class_list`).
        seen_only: label only the seen classes (ids index the seen list; unseen pixels are ignored).
    """

    name: str
    split: str
    image_dir: str
    label_dir: str
    class_list: str
    seen_only: bool = False

    @property
    def classes(self) -> ClassList:
        return load_class_list(self.class_list)

    @property
    def class_names(self) -> Tuple[str, ...]:
        """(K,) names indexed by the ids in this dataset's label files."""
        return self.classes.seen if self.seen_only else self.classes.names

    @property
    def raw_ids(self) -> Tuple[int, ...]:
        """(K,) raw annotation value of each class in :attr:`class_names`."""
        return self.classes.seen_raw_ids if self.seen_only else self.classes.raw_ids

    @property
    def unseen_classes(self) -> Optional[List[str]]:
        """Unseen classes among :attr:`class_names`: ``None`` without a split, ``[]`` for a seen-only set."""
        if not self.classes.unseen:
            return None
        return [] if self.seen_only else list(self.classes.unseen)

    @property
    def ignore_label(self) -> int:
        return ignore_label_for(len(self.class_names))


def register_specs(specs: Iterable[DatasetSpec], root: Optional[PathLike], *, prepare_hint: str) -> None:
    """Register every spec with directories under ``root`` (default: :func:`dataset_root`)."""
    root = Path(root if root is not None else dataset_root())
    for spec in specs:
        register_sem_seg_dataset(
            spec.name,
            image_dir=root / spec.image_dir,
            gt_dir=root / spec.label_dir,
            class_names=spec.class_names,
            unseen_classes=spec.unseen_classes,
            prepare_hint=prepare_hint,
        )


def register_sem_seg_dataset(
    name: str,
    *,
    image_dir: PathLike,
    gt_dir: PathLike,
    class_names: Sequence[str],
    prepare_hint: str,
    unseen_classes: Optional[Sequence[str]] = None,
    image_ext: str = ".jpg",
) -> None:
    """Register (or re-register, replacing an earlier entry) a dataset in DatasetCatalog and MetadataCatalog.

    Metadata: ``stuff_classes``, ``ignore_label`` (255, or 65535 for more than 254 classes),
    ``evaluator_type`` "gzs_sem_seg", ``image_root``, ``sem_seg_root`` and, where a seen/unseen split applies,
    ``unseen_classes`` (an empty list for a seen-only training set).
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    image_dir, gt_dir = str(image_dir), str(gt_dir)
    DatasetCatalog.register(
        name,
        functools.partial(load_sem_seg_records, gt_dir, image_dir, prepare_hint=prepare_hint, image_ext=image_ext),
    )
    meta: Dict[str, Any] = dict(
        stuff_classes=list(class_names),
        ignore_label=ignore_label_for(len(class_names)),
        evaluator_type="gzs_sem_seg",
        image_root=image_dir,
        sem_seg_root=gt_dir,
    )
    if unseen_classes is not None:
        meta["unseen_classes"] = list(unseen_classes)
    MetadataCatalog.get(name).set(**meta)


# ---------------------------------------------------------------------------------------------------------------
# Prepare scripts
# ---------------------------------------------------------------------------------------------------------------


class LayoutError(Exception):
    """A dataset download is missing or not laid out as a prepare script expects."""


def require(path: PathLike, what: str, *, is_dir: bool = True) -> Path:
    """``path`` if it exists (as a directory, or a file when ``is_dir`` is False), else :class:`LayoutError`."""
    path = Path(path)
    if not (path.is_dir() if is_dir else path.is_file()):
        kind = "directory" if is_dir else "file"
        raise LayoutError(f"{what}: expected the {kind} {path}, which does not exist")
    return path


def run_parallel(fn: Callable[[Any], Any], jobs: Iterable[Any], *, workers: int, desc: str) -> List[Any]:
    """``[fn(job) for job in jobs]`` over a process pool (``workers`` > 1) with a tqdm progress bar.

    Results come back in job order. ``fn`` and the jobs must be picklable (module-level function, plain data).
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="file")]
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc, unit="file"))


def run_prepare(prepare: Callable[[], None]) -> int:
    """Exit status of a prepare script: 0, or 1 with the layout problem logged as one line (no traceback)."""
    try:
        prepare()
    except LayoutError as e:
        logger.error("error: %s", e)
        return 1
    return 0
