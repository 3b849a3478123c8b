#!/usr/bin/env python
"""Fast mode versus exact mode on a trained model: GZS3 accuracy change, crops sent to CLIP, CLIP time.

    python train_net.py --config-file configs/toy/zegformer.yaml          # once: the quickstart's model
    python bench/bench_fast_mode.py --config-file configs/toy/zegformer.yaml \\
        --weights output/toy_zegformer/model_final.pth

Evaluates the model on the config's test set (DATASETS.TEST[0]) in exact mode, in fast mode with the cut-offs in
the config (MODEL.CLIP.FAST_MODE.*, ENABLED set to True), and in every ``--variant NAME KEY VALUE ...`` (config
overrides on top of fast mode, e.g. ``--variant cap8 MODEL.CLIP.FAST_MODE.MAX_QUERIES 8``), all in one run.
Reports mIoU / mIoU-seen / mIoU-unseen / hIoU, their change from exact mode (points), crops sent to CLIP per
image, seconds per image in the CLIP image branch and in total, and exact mode's CLIP time over each variant's.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build  # noqa: E402
from common import ClipProbe, describe_machine, markdown_table, parse_variants, set_threads  # noqa: E402

from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.engine.trainer import ZegsegTrainer  # noqa: E402

METRICS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU")


def evaluate(config_file: str, opts, weights: str) -> dict:
    """GZS3 metrics, CLIP crops and seconds per image of one configuration."""
    cfg = load_config(config_file, opts)
    model = build(config_file, opts, weights)
    probe = ClipProbe(model)
    start = time.perf_counter()
    results = ZegsegTrainer.test(cfg, model)
    elapsed = time.perf_counter() - start
    metrics = next(iter(results.values()))["sem_seg"] if len(cfg.DATASETS.TEST) > 1 else results["sem_seg"]
    images = max(probe.images, 1)
    return {**{k: metrics.get(k, float("nan")) for k in METRICS}, "crops": probe.crops / images,
            "clip_s": probe.clip_seconds / images, "total_s": elapsed / images, "device": model.device}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="trained checkpoint (e.g. the quickstart's model_final.pth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY VALUE", help="fast-mode variant")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all runs")
    args = parser.parse_args(argv)
    for path, what in ((args.config_file, "config file"), (args.weights, "checkpoint")):
        if not Path(path).is_file():
            raise SystemExit(f"{what} not found: {path}")
    set_threads(args.threads)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    base = list(args.opts) + ["MODEL.DEVICE", args.device]
    fast = ["MODEL.CLIP.FAST_MODE.ENABLED", "True"]
    runs = [("exact", ["MODEL.CLIP.FAST_MODE.ENABLED", "False"])]
    runs += [(name, fast + opts) for name, opts in parse_variants(args.variant, first="fast (config)")]
    rows = []
    for name, opts in runs:
        r = evaluate(args.config_file, base + opts, args.weights)
        rows.append((name, r))
        print(f"[bench] {name}: hIoU {r['hIoU']:.2f}, {r['crops']:.1f} crops/image", file=sys.stderr, flush=True)
    exact = rows[0][1]
    cfg = load_config(args.config_file, base + fast)
    cut = cfg.MODEL.CLIP.FAST_MODE
    print(f"\n{describe_machine(exact['device'])}\n\n`python {' '.join(sys.argv)}`\n")
    print(f"config {args.config_file} | weights {args.weights} | test set {cfg.DATASETS.TEST[0]} | fast (config): "
          f"MIN_CONTRIBUTION {cut.MIN_CONTRIBUTION}, MIN_MASK_AREA {cut.MIN_MASK_AREA}, MAX_QUERIES "
          f"{cut.MAX_QUERIES}, DUPLICATE_IOU {cut.DUPLICATE_IOU}\n")
    header = ["mode", *METRICS, "Δ seen", "Δ unseen", "Δ hIoU", "crops to CLIP", "CLIP s/image",
              "exact CLIP time / this", "total s/image"]
    table = []
    for name, r in rows:
        deltas = [f"{r[k] - exact[k]:+.2f}" for k in ("mIoU-seen", "mIoU-unseen", "hIoU")]
        speed = f"{exact['clip_s'] / r['clip_s']:.2f}x" if r["clip_s"] > 0 else "n/a"
        table.append([name, *(f"{r[k]:.2f}" for k in METRICS), *deltas, f"{r['crops']:.1f}", r["clip_s"], speed,
                      r["total_s"]])
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
