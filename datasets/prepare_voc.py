#!/usr/bin/env python3
"""Convert PASCAL VOC 2012 + SBD annotations into zegseg's label PNGs (see datasets/README.md).

Reads (under --root, default $DETECTRON2_DATASETS or ./datasets):
    VOCdevkit/VOC2012/SegmentationClass/*.png                 VOC labels: 0 background, 1-20 classes, 255 void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/cls/*.mat, {train,val}.txt      SBD (--sbd-dir), for the 10,582-image train set
Writes:
    VOCdevkit/VOC2012/annotations_detectron2/train_seen/      15 seen classes; background, void, unseen 255
    VOCdevkit/VOC2012/annotations_detectron2/val_all/         20 classes; background and void 255
The training set is (SBD train + SBD val + VOC train) minus VOC val; VOC's own label is used where it exists,
SBD's otherwise. Existing outputs are kept, so an interrupted run can be resumed.
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
    read_label,
    require,
    run_parallel,
    run_prepare,
    write_label,
)
from zegseg.data.datasets.register_voc import VOC_SPECS

logger = logging.getLogger("prepare_voc")

Job = Tuple[str, str, str]  # source label (.png or SBD .mat), output path, spec name


def read_voc_label(path: str) -> np.ndarray:
    """(H, W) uint8 raw VOC label from a SegmentationClass PNG or an SBD ``cls/*.mat`` (``GTcls.Segmentation``)."""
    if path.endswith(".mat"):
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
            raise LayoutError(f"{path}: expected an SBD class annotation with GTcls.Segmentation")
        label = np.asarray(mat["GTcls"].Segmentation)
    else:
        label = read_label(path)
    if label.ndim != 2 or label.size == 0 or label.min() < 0 or label.max() > 255:
        raise LayoutError(f"{path}: expected an (H, W) label with values in 0..255")
    return label.astype(np.uint8)


def convert(job: Job, luts: Dict[str, np.ndarray]) -> int:
    source, out, name = job
    if os.path.exists(out):
        return 0
    write_label(out, luts[name][read_voc_label(source)])
    return 1


def read_ids(path: Path, what: str) -> List[str]:
    return [line.strip() for line in require(path, what, is_dir=False).read_text().splitlines() if line.strip()]


def prepare(root: Path, sbd_dir: Optional[Path], workers: int) -> None:
    voc = require(root / "VOCdevkit" / "VOC2012", "PASCAL VOC 2012 (extract VOCtrainval_11-May-2012.tar)")
    seg_dir = require(voc / "SegmentationClass", "VOC segmentation labels")
    require(voc / "JPEGImages", "VOC images")
    lists = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_ids(lists / "train.txt", "VOC train list"), read_ids(lists / "val.txt", "VOC val list")
    train_ids = set(voc_train)
    if sbd_dir is not None:
        require(sbd_dir / "cls", "SBD class annotations (extract benchmark.tgz, or pass --sbd-dir / --no-sbd)")
        train_ids |= set(read_ids(sbd_dir / "train.txt", "SBD train list"))
        train_ids |= set(read_ids(sbd_dir / "val.txt", "SBD val list"))
    ids = {"train": sorted(train_ids - set(voc_val)), "val": sorted(voc_val)}

    def source(image_id: str) -> str:
        png = seg_dir / f"{image_id}.png"
        if png.is_file():
            return str(png)
        mat = sbd_dir / "cls" / f"{image_id}.mat" if sbd_dir is not None else None
        if mat is not None and mat.is_file():
            return str(mat)
        raise LayoutError(f"label of {image_id}: expected {png}" + (f" or {mat}" if mat is not None else ""))

    jobs: List[Job] = []
    for spec in VOC_SPECS:
        out_dir = root / spec.label_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(source(i), str(out_dir / f"{i}.png"), spec.name) for i in ids[spec.split]]
    luts = {spec.name: label_lut(spec.raw_ids, 256) for spec in VOC_SPECS}
    written = run_parallel(partial(convert, luts=luts), jobs, workers=workers, desc="VOC labels")
    logger.info("VOC: %d train and %d val images; wrote %d label files (%d already present)",
                len(ids["train"]), len(ids["val"]), sum(written), len(jobs) - sum(written))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=dataset_root(), help="dataset root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--sbd-dir", default=None, help="SBD folder (default: ROOT/benchmark_RELEASE/dataset)")
    parser.add_argument("--no-sbd", action="store_true", help="train on VOC's 1,464 training images only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.root)
    sbd_dir = None if args.no_sbd else Path(args.sbd_dir or root / "benchmark_RELEASE" / "dataset")
    return run_prepare(lambda: prepare(root, sbd_dir, args.workers))


if __name__ == "__main__":
    sys.exit(main())
