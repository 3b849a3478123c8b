#!/usr/bin/env python3
"""Convert PASCAL Context validation annotations into zegseg's 59- and 459-class label PNGs.

Reads (under --root, default $DETECTRON2_DATASETS or ./datasets):
    VOCdevkit/VOC2010/JPEGImages/*.jpg           from VOCtrainval_03-May-2010.tar
    VOCdevkit/VOC2010/ImageSets/Main/val.txt     the 5,105 validation images (or --val-list)
    VOCdevkit/VOC2010/trainval/*.mat             from PASCAL Context's trainval.tar.gz: "LabelMap", values
                                                 1-459 = line of labels.txt, 0 unlabeled
    VOCdevkit/VOC2010/labels.txt                 optional; when present it must match the packaged 459 names
Writes:
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.png    16-bit, ids 0-458, 65535 ignore
    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png     8-bit, ids 0-58, 255 for every other class
Existing outputs are kept, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.io

from zegseg.data.datasets.common import (
    LayoutError,
    dataset_root,
    label_lut,
    load_class_list,
    require,
    run_parallel,
    run_prepare,
    write_label,
)
from zegseg.data.datasets.register_pcontext import PCONTEXT_SPECS

logger = logging.getLogger("prepare_pcontext")

Job = Tuple[str, List[Tuple[str, str]]]  # source .mat, [(output path, spec name)]


def read_label_map(path: str) -> np.ndarray:
    """(H, W) int64 raw PASCAL Context class ids from a ``trainval/*.mat`` file."""
    mat = scipy.io.loadmat(path)
    if "LabelMap" not in mat or np.ndim(mat["LabelMap"]) != 2:
        raise LayoutError(f"{path}: expected a PASCAL Context annotation with an (H, W) 'LabelMap'")
    label = mat["LabelMap"].astype(np.int64)
    if label.min() < 0 or label.max() >= 65536:
        raise LayoutError(f"{path}: LabelMap values outside 0..65535")
    return label


def convert(job: Job, luts: Dict[str, np.ndarray]) -> int:
    source, outputs = job
    todo = [(out, name) for out, name in outputs if not os.path.exists(out)]
    if not todo:
        return 0
    raw = read_label_map(source)
    for out, name in todo:
        write_label(out, luts[name][raw])
    return len(todo)


def check_labels_txt(path: Path) -> None:
    """Raise LayoutError when labels.txt ("<id>: <name>" lines) disagrees with the packaged 459-class list."""
    expected = load_class_list("pcontext_459")
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        raw_id, name = (part.strip() for part in line.split(":", 1))
        if not raw_id.isdigit():
            continue
        k = int(raw_id) - 1
        if not 0 <= k < len(expected.names) or expected.names[k] != name:
            raise LayoutError(f"{path}: line {line!r} disagrees with zegseg's PASCAL Context 459-class list")


def prepare(root: Path, val_list: Optional[Path], workers: int) -> None:
    voc = require(root / "VOCdevkit" / "VOC2010", "PASCAL VOC 2010 (extract VOCtrainval_03-May-2010.tar)")
    mat_dir = require(voc / "trainval", "PASCAL Context annotations (extract trainval.tar.gz into VOCdevkit/VOC2010)")
    require(voc / "JPEGImages", "VOC 2010 images")
    if (voc / "labels.txt").is_file():
        check_labels_txt(voc / "labels.txt")
    list_file = require(val_list or voc / "ImageSets" / "Main" / "val.txt", "validation list", is_dir=False)
    ids = sorted({line.strip() for line in list_file.read_text().splitlines() if line.strip()})
    if not ids:
        raise LayoutError(f"validation list {list_file} is empty")
    jobs: List[Job] = []
    for image_id in ids:
        mat = mat_dir / f"{image_id}.mat"
        if not mat.is_file():
            raise LayoutError(f"annotation of {image_id}: expected {mat}, which does not exist")
        jobs.append((str(mat), [(str(root / s.label_dir / f"{image_id}.png"), s.name) for s in PCONTEXT_SPECS]))
    for spec in PCONTEXT_SPECS:
        (root / spec.label_dir).mkdir(parents=True, exist_ok=True)
    luts = {spec.name: label_lut(spec.raw_ids, 65536) for spec in PCONTEXT_SPECS}
    written = run_parallel(partial(convert, luts=luts), jobs, workers=workers, desc="PASCAL Context labels")
    logger.info("PASCAL Context: %d validation images; wrote %d label files (%d already present)",
                len(ids), sum(written), len(PCONTEXT_SPECS) * len(ids) - sum(written))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=dataset_root(), help="dataset root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--val-list", default=None, help="image ids to convert (default: ImageSets/Main/val.txt)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    val_list = Path(args.val_list) if args.val_list else None
    return run_prepare(lambda: prepare(Path(args.root), val_list, args.workers))


if __name__ == "__main__":
    sys.exit(main())
