#!/usr/bin/env python
"""Generate the embedded toy world under $DETECTRON2_DATASETS/toy (default ./datasets/toy).

Example: ``python tools/generate_toy_world.py --seed 0 --train 2000 --val 200``.
"""
import argparse
import logging

from zegseg.data.toy import DEFAULT_COUNTS, DEFAULT_IMAGE_SIZE, DEFAULT_SEED, generate_toy_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--world", default=None, help="class list / split JSON (default: zegseg/data/toy/world.json)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="world seed")
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="square image size in pixels")
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"], help="number of training images")
    parser.add_argument("--val", type=int, default=DEFAULT_COUNTS["val"], help="number of validation images")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    generate_toy_world(
        args.root,
        world_file=args.world,
        seed=args.seed,
        size=args.size,
        counts={"train": args.train, "val": args.val},
        workers=args.workers,
        force=args.force,
    )


if __name__ == "__main__":
    main()
