#!/usr/bin/env python3
"""Convert ADE20K SceneParsing (ADEChallengeData2016) validation labels into zegseg's label PNGs.

Reads (under --root, default $DETECTRON2_DATASETS or ./datasets):
    ADEChallengeData2016/annotations/validation/*.png    from ADEChallengeData2016.zip: 0 other, 1-150 classes
Writes:
    ADEChallengeData2016/annotations_detectron2/validation/*.png    150 classes, ids 0-149, 255 ignore
Existing outputs are kept, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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
from zegseg.data.datasets.register_ade20k_150 import ADE20K_150_SPECS

logger = logging.getLogger("prepare_ade20k_150")


def convert(job: Tuple[str, str], lut: np.ndarray) -> int:
    source, out = job
    if os.path.exists(out):
        return 0
    raw = read_label(source)
    if raw.dtype != np.uint8:
        raise LayoutError(f"{source}: expected an 8-bit ADE20K label PNG, got {raw.dtype}")
    write_label(out, lut[raw])
    return 1


def prepare(root: Path, workers: int) -> None:
    ade = require(root / "ADEChallengeData2016", "ADE20K SceneParsing (extract ADEChallengeData2016.zip)")
    for spec in ADE20K_150_SPECS:
        src_dir = require(ade / "annotations" / spec.split, "ADE20K-150 annotations")
        sources = sorted(src_dir.glob("*.png"))
        if not sources:
            raise LayoutError(f"ADE20K-150 annotations: expected *.png files in {src_dir}, found none")
        require(root / spec.image_dir, "ADE20K-150 images")
        out_dir = root / spec.label_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs: List[Tuple[str, str]] = [(str(s), str(out_dir / s.name)) for s in sources]
        fn = partial(convert, lut=label_lut(spec.raw_ids, 256))
        written = run_parallel(fn, jobs, workers=workers, desc=f"ADE20K-150 {spec.split}")
        logger.info("ADE20K-150 %s: wrote %d label files (%d already present)",
                    spec.split, sum(written), len(jobs) - sum(written))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=dataset_root(), help="dataset root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_prepare(lambda: prepare(Path(args.root), args.workers))


if __name__ == "__main__":
    sys.exit(main())
