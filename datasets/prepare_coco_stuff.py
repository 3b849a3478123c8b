#!/usr/bin/env python3
"""Convert COCO-Stuff 164k annotations into zegseg's label PNGs (see datasets/README.md).

Reads (under --root, default $DETECTRON2_DATASETS or ./datasets):
    coco/stuffthingmaps/{train2017,val2017}/*.png    from stuffthingmaps_trainval2017.zip: raw ids 0-181, 255 unlabeled
Writes:
    coco/stuffthingmaps_detectron2/train2017_all/     171 classes, contiguous ids, 255 ignore
    coco/stuffthingmaps_detectron2/train2017_seen/    156 seen classes; unseen pixels 255
    coco/stuffthingmaps_detectron2/val2017_all/       171 classes
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
from zegseg.data.datasets.register_coco_stuff import COCO_STUFF_SPECS

logger = logging.getLogger("prepare_coco_stuff")

Job = Tuple[str, List[Tuple[str, str]]]  # source label, [(output path, spec name)]


def convert(job: Job, luts: Dict[str, np.ndarray]) -> int:
    """Write the outputs of one source label that do not exist yet; returns how many were written."""
    source, outputs = job
    todo = [(out, name) for out, name in outputs if not os.path.exists(out)]
    if not todo:
        return 0
    raw = read_label(source)
    if raw.dtype != np.uint8:
        raise LayoutError(f"{source}: expected an 8-bit COCO-Stuff label PNG, got {raw.dtype}")
    for out, name in todo:
        write_label(out, luts[name][raw])
    return len(todo)


def prepare(root: Path, workers: int) -> None:
    coco = require(root / "coco", "COCO directory")
    jobs: Dict[str, List[Tuple[str, str]]] = {}
    for split in sorted({spec.split for spec in COCO_STUFF_SPECS}):
        src_dir = require(coco / "stuffthingmaps" / split, "COCO-Stuff labels (unzip stuffthingmaps_trainval2017.zip)")
        sources = sorted(src_dir.glob("*.png"))
        if not sources:
            raise LayoutError(f"COCO-Stuff labels: expected *.png files in {src_dir}, found none")
        if not (coco / split).is_dir():
            logger.warning("COCO images %s not found: needed for training and evaluation", coco / split)
        for spec in (s for s in COCO_STUFF_SPECS if s.split == split):
            out_dir = root / spec.label_dir
            out_dir.mkdir(parents=True, exist_ok=True)
            for src in sources:
                jobs.setdefault(str(src), []).append((str(out_dir / src.name), spec.name))
    luts = {spec.name: label_lut(spec.raw_ids, 256) for spec in COCO_STUFF_SPECS}
    written = run_parallel(partial(convert, luts=luts), list(jobs.items()), workers=workers, desc="COCO-Stuff labels")
    logger.info("COCO-Stuff: wrote %d label files (%d already present)", sum(written),
                sum(len(o) for o in jobs.values()) - sum(written))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=dataset_root(), help="dataset root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_prepare(lambda: prepare(Path(args.root), args.workers))


if __name__ == "__main__":
    sys.exit(main())
