#!/usr/bin/env python3
"""Convert ADE20K-Full (ADE20K_2021_17_01) into zegseg's images and 16-bit label PNGs (see datasets/README.md).

Reads (under --root, default $DETECTRON2_DATASETS or ./datasets):
    ADE20K_2021_17_01/index_ade20k.pkl                      its "folder" and "filename" lists locate every image
    <folder>/<name>.jpg and <folder>/<name>_seg.png          class index per pixel = (R // 10) * 256 + G
Writes (images whose shorter side exceeds --max-size are downscaled to it, labels with nearest neighbour):
    ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg
    ADE20K_2021_17_01/annotations_detectron2/training_seen/*.png     572 seen classes; everything else 65535
    ADE20K_2021_17_01/annotations_detectron2/validation_all/*.png    847 classes; unlabeled and others 65535
Files named ADE_val_* form the validation split, all others the training split. Existing outputs are kept.
The index is read without running code (numpy arrays and plain containers only), and every path it lists must
stay inside --root.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from zegseg.checkpoint.safe_pickle import safe_pickle_load
from zegseg.data.datasets.common import (
    LayoutError,
    dataset_root,
    label_lut,
    require,
    run_parallel,
    run_prepare,
    write_bytes,
    write_label,
)
from zegseg.data.datasets.register_ade20k_full import ADE20K_FULL_SPECS

logger = logging.getLogger("prepare_ade20k_full")

_LUT_SIZE = 26 * 256  # (255 // 10) * 256 + 255 < 26 * 256

Job = Tuple[str, str, str, str]  # source image, output image, output label, spec name


def decode_ade_classes(seg_path: str) -> np.ndarray:
    """(H, W) int64 ADE20K class index of a ``*_seg.png``: ``(R // 10) * 256 + G``, 0 unlabeled."""
    with Image.open(seg_path) as img:
        rgb = np.asarray(img.convert("RGB"))
    return (rgb[..., 0].astype(np.int64) // 10) * 256 + rgb[..., 1]


def output_size(height: int, width: int, max_size: int) -> Optional[Tuple[int, int]]:
    """(height, width) with the shorter side scaled down to ``max_size``, or None when it is not longer."""
    short = min(height, width)
    if short <= max_size:
        return None
    scale = max_size / short
    return (max_size, round(width * scale)) if height == short else (round(height * scale), max_size)


def convert(job: Job, luts: Dict[str, np.ndarray], max_size: int) -> int:
    source, out_image, out_label, name = job
    todo_image, todo_label = not os.path.exists(out_image), not os.path.exists(out_label)
    if not (todo_image or todo_label):
        return 0
    seg_path = source[: -len(".jpg")] + "_seg.png"
    image = cv2.imread(source, cv2.IMREAD_COLOR)
    if image is None:
        raise LayoutError(f"could not read the image {source}")
    size = output_size(*image.shape[:2], max_size)
    if todo_image:
        if size is None:
            write_bytes(out_image, Path(source).read_bytes())
        else:
            resized = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
            write_bytes(out_image, cv2.imencode(".jpg", resized)[1].tobytes())
    if todo_label:
        if not os.path.isfile(seg_path):
            raise LayoutError(f"segmentation of {source}: expected {seg_path}, which does not exist")
        classes = decode_ade_classes(seg_path)
        if classes.shape != image.shape[:2]:
            raise LayoutError(f"{seg_path}: size {classes.shape} differs from its image's {image.shape[:2]}")
        label = luts[name][classes]
        if size is not None:
            label = cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)
        write_label(out_label, label)
    return int(todo_image) + int(todo_label)


def read_index(index_file: Path) -> Dict[str, list]:
    """The ADE20K-Full index, unpickled without running code: a dict with 'folder' and 'filename' lists."""
    try:
        with open(index_file, "rb") as f:
            index = safe_pickle_load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise LayoutError(f"{index_file}: cannot read the index ({e or type(e).__name__}); download it again") from None
    if not isinstance(index, dict) or not {"folder", "filename"} <= set(index):
        raise LayoutError(f"{index_file}: expected a dict with 'folder' and 'filename' lists")
    return index


def source_path(root: Path, folder: object, filename: object, index_file: Path) -> Path:
    """``root / folder / filename`` for one index entry, refusing names that would leave ``root``.

    ``filename`` must be a plain file name (it also names the outputs); ``folder`` must stay inside ``root``
    (checked on the path's text, so that symbolic links inside the dataset still work).
    """
    if not isinstance(folder, str) or not isinstance(filename, str):
        raise LayoutError(f"{index_file}: entry {folder!r}/{filename!r} is not text")
    if filename in ("", ".", "..") or Path(filename).name != filename or "\\" in filename:
        raise LayoutError(f"{index_file}: {filename!r} is not a plain file name")
    base = os.path.normpath(root)
    source = os.path.normpath(os.path.join(base, folder, filename))
    if os.path.commonpath([base, source]) != base:
        raise LayoutError(f"{index_file}: {folder}/{filename} points outside the dataset root {root}")
    return Path(source)


def prepare(root: Path, workers: int, max_size: int) -> None:
    ade = require(root / "ADE20K_2021_17_01", "ADE20K-Full (extract ADE20K_2021_17_01.zip)")
    index_file = require(ade / "index_ade20k.pkl", "ADE20K-Full index", is_dir=False)
    index = read_index(index_file)
    specs = {spec.split: spec for spec in ADE20K_FULL_SPECS}
    jobs: List[Job] = []
    for folder, filename in zip(index["folder"], index["filename"]):
        source = source_path(root, folder, filename, index_file)
        if not source.is_file():
            raise LayoutError(f"image listed in {index_file}: expected {source}, which does not exist")
        parts = Path(filename).stem.split("_")
        spec = specs["validation" if len(parts) > 1 and parts[1] == "val" else "training"]
        out_image = root / spec.image_dir / filename
        out_label = root / spec.label_dir / f"{Path(filename).stem}.png"
        jobs.append((str(source), str(out_image), str(out_label), spec.name))
    if not jobs:
        raise LayoutError(f"{index_file} lists no images")
    for spec in ADE20K_FULL_SPECS:
        (root / spec.image_dir).mkdir(parents=True, exist_ok=True)
        (root / spec.label_dir).mkdir(parents=True, exist_ok=True)
    luts = {spec.name: label_lut(spec.raw_ids, _LUT_SIZE) for spec in ADE20K_FULL_SPECS}
    fn = partial(convert, luts=luts, max_size=max_size)
    written = run_parallel(fn, jobs, workers=workers, desc="ADE20K-Full")
    logger.info("ADE20K-Full: %d images; wrote %d files (%d already present)",
                len(jobs), sum(written), 2 * len(jobs) - sum(written))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=dataset_root(), help="dataset root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--max-size", type=int, default=512, help="downscale images whose shorter side is longer")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_prepare(lambda: prepare(Path(args.root), args.workers, args.max_size))


if __name__ == "__main__":
    sys.exit(main())
