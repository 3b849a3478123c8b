#!/usr/bin/env python
"""Single-pass CLIP (``MODEL.CLIP.REGION_MODE dense``) against the per-crop CLIP image branch, in one interleaved run.

    # speed at the COCO-Stuff reference config (random weights, random 640 x 640 images)
    python bench/bench_single_pass.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \\
        --clip-arch ViT-B/16 --size 640 --images 3 --variant dense MODEL.CLIP.REGION_MODE dense
    # accuracy (GZS3 on the config's test set) of a trained model
    python bench/bench_single_pass.py --config-file configs/toy/zegformer.yaml \\
        --weights output/toy_zegformer/model_final.pth --variant dense MODEL.CLIP.REGION_MODE dense

The first mode is the config as given with ``MODEL.CLIP.REGION_MODE crops`` (the paper's path); each ``--variant NAME
KEY VALUE ...`` adds a mode (config overrides). All modes live in one process with the same weights (``--weights``, or
the same seeded random weights) and every image goes through every mode in turn, the order rotating from image to
image, so that a machine shared with other work slows all modes alike.

With ``--size N`` the inputs are random N x N images and the table gives seconds per image in total, in the
segmentation network (backbone + pixel decoder + transformer decoder), in the CLIP image branch (crops and their
CLIP forwards, or the one dense forward and the mask pooling) and in the rest; the masks CLIP scored per image; the
speed-up over the first mode; and "vs goal": each mode's time over (its network time + one dense CLIP forward of
the image alone, timed in the same run). Without ``--size`` the config's test set (DATASETS.TEST[0]) is evaluated
(``--images`` limits it) and the table gives mIoU / mIoU-seen / mIoU-unseen / hIoU, their change from the first mode,
and the same per-image counts and times (:mod:`bench_fast_mode`'s table).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast_mode import Mode, run_interleaved, table  # noqa: E402
from bench_inference import build  # noqa: E402
from common import (  # noqa: E402
    ClipProbe,
    add_mode_arguments,
    check_mode_arguments,
    describe_machine,
    markdown_table,
    parse_variants,
    random_clip_checkpoint,
    set_threads,
    synchronize,
    time_call,
)

from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.engine.trainer import ZegsegTrainer  # noqa: E402
from zegseg.modeling.clip.dense_features import encode_dense  # noqa: E402


def dense_forward_seconds(model, size: int, repeat: int = 2) -> float:
    """Seconds of one dense CLIP forward of a random size x size image (autocast on CUDA, as the model runs it)."""
    x = torch.randn(1, 3, size, size, device=model.device)
    amp = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device_type=model.device.type, enabled=amp):
        return time_call(lambda: encode_dense(model.clip_model, x), repeat=repeat, warmup=1, device=model.device)


def speed(runs, config_file: str, weights: str, size: int, images: int, warmup: int) -> str:
    """Random-image timing of every mode, interleaved; returns the Markdown table."""
    models, probes, seconds = [], [], []
    for _, opts in runs:
        torch.manual_seed(0)  # without --weights every mode gets the same random weights
        models.append(build(config_file, opts + ["INPUT.MIN_SIZE_TEST", str(size)], weights))
        probes.append(ClipProbe(models[-1]))
        seconds.append(0.0)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for i in range(warmup + images):
            image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
            order = list(range(len(runs)))
            order = order[i % len(order):] + order[: i % len(order)]
            for m in order:
                if i == warmup:
                    probes[m].reset()
                synchronize(models[m].device)
                start = time.perf_counter()
                models[m]([{"image": image, "height": size, "width": size}])
                synchronize(models[m].device)
                if i >= warmup:
                    seconds[m] += time.perf_counter() - start
            print(f"[bench] image {i + 1}/{warmup + images}", file=sys.stderr, flush=True)
    goal_clip = dense_forward_seconds(models[0], size)
    header = ["mode", "s/image", "network s", "CLIP s", "rest s", "masks scored by CLIP / image", "speed-up vs first",
              "vs goal (network + one dense CLIP forward)"]
    body = []
    for (name, _), probe, total in zip(runs, probes, seconds):
        r = probe.per_image()
        s = total / images
        body.append([name, s, r["network_s"], r["clip_s"], s - r["network_s"] - r["clip_s"], f"{r['crops']:.1f}",
                     f"{seconds[0] / total:.2f}x", f"{s / (r['network_s'] + goal_clip):.2f}x"])
    return (f"one dense CLIP forward of a {size} x {size} image alone: {goal_clip:.3g} s\n\n"
            + markdown_table(header, body))


def accuracy(runs, config_file: str, weights: str, images: int, warmup: int) -> str:
    """GZS3 evaluation of every mode on the config's test set, interleaved; returns the Markdown table."""
    cfg = load_config(config_file, runs[0][1])
    dataset = cfg.DATASETS.TEST[0]
    modes: List[Mode] = [Mode(name, config_file, opts, weights, dataset) for name, opts in runs]
    run_interleaved(modes, ZegsegTrainer.build_test_loader(cfg, dataset), images, warmup)
    rows = [(m.name, m.result()) for m in modes]
    return f"test set {dataset}, {rows[0][1]['timed_images']} timed images per mode\n\n" + table(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser)
    parser.add_argument("--size", type=int, default=0, help="random size x size images, timing only (0: test set)")
    parser.add_argument("--images", type=int, default=0, help="timed images (random) or test images (0: all)")
    parser.add_argument("--warmup", type=int, default=1, help="images run first, untimed")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all modes")
    args = parser.parse_args(argv)
    check_mode_arguments(args)
    if args.size and args.images < 1:
        raise SystemExit("--size needs --images >= 1")
    set_threads(args.threads)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("zegseg").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        base = list(args.opts) + ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", ""]
        if args.clip_arch:
            base += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, Path(tmp)))]
        variants = parse_variants(args.variant, first="crops")
        runs = [(name, base + ["MODEL.CLIP.REGION_MODE", "crops"] + opts) for name, opts in variants]
        if args.size:
            result = speed(runs, args.config_file, args.weights, args.size, args.images, args.warmup)
        else:
            result = accuracy(runs, args.config_file, args.weights, args.images, args.warmup)
    print(f"\n{describe_machine(args.device)}\n\n`python {' '.join(sys.argv)}`\n")
    print(f"config {args.config_file} | weights {args.weights or 'random (seeded)'} | modes interleaved image by "
          f"image, {args.warmup} untimed first\n")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
