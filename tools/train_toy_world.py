#!/usr/bin/env python
"""Train and evaluate a toy config on another toy world: another seed, another unseen split.

    python tools/generate_toy_world.py --seed 1 --world configs/toy/world_split2.json --root datasets/split2
    python tools/train_toy_world.py --world configs/toy/world_split2.json --root datasets/split2 \\
        --config-file configs/toy/zegformer.yaml OUTPUT_DIR output/toy_split2_zegformer

The world's datasets under ``ROOT/toy`` are registered with the prefix ``other_`` (``other_toy_train_seen_sem_seg``,
``other_toy_val_all_sem_seg``, ...) and DATASETS.TRAIN / DATASETS.TEST point at them; every other argument is
train_net.py's. A world missing under ROOT is generated with the default seed on first use.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

import train_net  # noqa: E402  (registers zegseg)
from zegseg.data.datasets.register_toy import register_all_toy  # noqa: E402
from zegseg.data.toy import load_world  # noqa: E402
from zegseg.engine import preflight  # noqa: E402

PREFIX = "other_"


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--world", required=True, help="class list / split JSON of the world")
    parser.add_argument("--root", required=True, help="dataset root holding the world's toy/ folder")
    world_args, rest = parser.parse_known_args()
    try:
        load_world(world_args.world)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    register_all_toy(world_args.root, world_args.world, prefix=PREFIX)
    args = default_argument_parser().parse_args(rest)
    args.opts += [
        "DATASETS.TRAIN", f"('{PREFIX}toy_train_seen_sem_seg',)",
        "DATASETS.TEST", f"('{PREFIX}toy_val_all_sem_seg',)",
    ]  # fmt: skip
    preflight(args)
    launch(train_net.main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))  # fmt: skip


if __name__ == "__main__":
    main()
