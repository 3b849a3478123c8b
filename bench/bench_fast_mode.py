#!/usr/bin/env python
"""Fast mode versus exact mode on a trained model: GZS3 accuracy change, CLIP calls and crops, time per image.

    python train_net.py --config-file configs/toy/zegformer.yaml          # once: the quickstart's model
    python bench/bench_fast_mode.py --config-file configs/toy/zegformer.yaml \\
        --weights output/toy_zegformer/model_final.pth --threads 1

Evaluates the model on the config's test set (DATASETS.TEST[0]) in exact mode, in fast mode as the config sets it
(MODEL.CLIP.FAST_MODE.*, ENABLED set to True), and in every ``--variant NAME KEY VALUE ...`` (config overrides on
top of fast mode, e.g. ``--variant cap8 MODEL.CLIP.FAST_MODE.MAX_QUERIES 8``), all in one process and
**interleaved**: every test image goes through every mode in turn (the order rotating from image to image), so
that a machine shared with other work slows all modes alike and the ratios stay comparable.

Columns: mIoU / mIoU-seen / mIoU-unseen / hIoU and their change from exact mode (points); per image (counted
where images enter the model, never per CLIP call): CLIP calls, crops encoded by CLIP, seconds in the CLIP image
branch and seconds of the whole model call (network, CLIP, ensembles, semantic map; data loading and evaluation
excluded); and exact mode's model time over each mode's ("speed-up": above 1 means faster than exact mode). The
first ``--warmup`` images are evaluated but not timed.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build  # noqa: E402
from common import ClipProbe, describe_machine, markdown_table, parse_variants, set_threads, synchronize  # noqa: E402

from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.engine.trainer import ZegsegTrainer  # noqa: E402

METRICS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU")


class Mode:
    """One configuration under test: its model, probe, evaluator and timer."""

    def __init__(self, name: str, config_file: str, opts: List[str], weights: str, dataset: str) -> None:
        self.name = name
        self.cfg = load_config(config_file, opts)
        torch.manual_seed(0)  # without --weights every mode gets the same random weights
        self.model = build(config_file, opts, weights)
        self.probe = ClipProbe(self.model)
        self.evaluator = ZegsegTrainer.build_evaluator(self.cfg, dataset, output_folder="")
        self.evaluator.reset()
        self.seconds = 0.0

    def run(self, inputs: List[Dict], timed: bool) -> None:
        synchronize(self.model.device)
        start = time.perf_counter()
        outputs = self.model(inputs)
        synchronize(self.model.device)
        if timed:
            self.seconds += time.perf_counter() - start
        else:
            self.probe.reset()
        self.evaluator.process(inputs, outputs)

    def result(self) -> Dict[str, float]:
        metrics = self.evaluator.evaluate()["sem_seg"]
        per_image = self.probe.per_image()
        return {**{k: metrics.get(k, float("nan")) for k in METRICS}, **per_image,
                "model_s": self.seconds / max(self.probe.images, 1), "timed_images": self.probe.images}


def run_interleaved(modes: List[Mode], loader, images: int, warmup: int) -> None:
    """Every image through every mode, the order rotating by one mode per image."""
    count = 0
    with torch.inference_mode():
        for i, inputs in enumerate(itertools.islice(loader, images or None)):
            shift = i % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                mode.run(inputs, timed=i >= warmup)
            count += len(inputs)
            if count % 50 == 0:
                print(f"[bench] {count} images", file=sys.stderr, flush=True)


def table(rows: List[Tuple[str, Dict[str, float]]]) -> str:
    exact = rows[0][1]
    header = ["mode", *METRICS, "Δ seen", "Δ unseen", "Δ hIoU", "CLIP calls / image", "crops / image",
              "CLIP s / image", "model s / image", "speed-up vs exact"]
    body = []
    for name, r in rows:
        deltas = [f"{r[k] - exact[k]:+.2f}" for k in ("mIoU-seen", "mIoU-unseen", "hIoU")]
        body.append([name, *(f"{r[k]:.2f}" for k in METRICS), *deltas, f"{r['clip_calls']:.2f}",
                     f"{r['crops']:.1f}", r["clip_s"], r["model_s"], f"{exact['model_s'] / r['model_s']:.2f}x"])
    return markdown_table(header, body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="",
                        help="trained checkpoint (e.g. the quickstart's model_final.pth); without it, seeded random "
                             "weights (speed and counts only: their accuracy means nothing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--images", type=int, default=0, help="evaluate only the first N test images (0: all)")
    parser.add_argument("--warmup", type=int, default=2, help="images evaluated but not timed, first")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY VALUE", help="fast-mode variant")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all modes")
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        raise SystemExit(f"config file not found: {args.config_file}")
    if args.weights and not Path(args.weights).is_file():
        raise SystemExit(f"checkpoint not found: {args.weights}")
    if args.images < 0 or args.warmup < 0 or (args.images and args.warmup >= args.images):
        raise SystemExit("--images must be >= 0 and larger than --warmup")
    set_threads(args.threads)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("zegseg").setLevel(logging.WARNING)
    base = list(args.opts) + ["MODEL.DEVICE", args.device]
    fast = ["MODEL.CLIP.FAST_MODE.ENABLED", "True"]
    runs = [("exact", ["MODEL.CLIP.FAST_MODE.ENABLED", "False"])]
    runs += [(name, fast + opts) for name, opts in parse_variants(args.variant, first="fast (config)")]
    cfg = load_config(args.config_file, base + fast)
    dataset = cfg.DATASETS.TEST[0]
    modes = [Mode(name, args.config_file, base + opts, args.weights, dataset) for name, opts in runs]
    run_interleaved(modes, ZegsegTrainer.build_test_loader(cfg, dataset), args.images, args.warmup)
    rows = [(m.name, m.result()) for m in modes]
    timed = rows[0][1]["timed_images"]
    cut = cfg.MODEL.CLIP.FAST_MODE
    print(f"\n{describe_machine(modes[0].model.device)}\n\n`python {' '.join(sys.argv)}`\n")
    print(f"config {args.config_file} | weights {args.weights or 'random (seeded)'} | test set {dataset} | "
          f"{timed} timed images per mode after {args.warmup} untimed, modes interleaved image by image | "
          f"fast (config): {', '.join(f'{k} {v}' for k, v in sorted(cut.items()) if k != 'ENABLED')}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
