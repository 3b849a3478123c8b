#!/usr/bin/env python
"""Single-pass CLIP against the per-crop path, timed by detectron2's own inference timer (a second measure).

    python bench/bench_single_pass_d2timer.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \\
        --clip-arch ViT-B/16 --size 640 --images 8 --threads 2 \\
        --variant dense MODEL.CLIP.REGION_MODE dense --order dense crops dense

:mod:`bench_single_pass` times the modes with its own counters. This script leaves the timing to detectron2: it
writes a tiny fake COCO-Stuff (``--images`` random ``--size`` x ``--size`` JPEGs with random label PNGs) in the
layout the ``coco_stuff_val_all_sem_seg`` registration reads, registers it under that temporary root and runs
``ZegsegTrainer.test`` (what ``train_net.py --eval-only`` runs: detectron2's test loader, the GZS3 evaluator and
``detectron2.evaluation.inference_on_dataset``) once per entry of ``--order``. The numbers in the table are the ones
detectron2 logs, parsed from its log records:

    Start inference on N batches
    Total inference time: ... (X s / iter per device, on 1 devices)             (includes data loading, evaluation)
    Total inference pure compute time: ... (Y s / iter per device, on 1 devices)  (the model's calls alone)

detectron2 leaves the first ``min(5, N - 1)`` images untimed (warm-up), so ``--images 8`` times 3 per run. The test
loader's batch is one image, so s / iter is s / image. The script itself only counts the images that enter each model
(to check detectron2's count) and never times them.

The modes are the config with ``MODEL.CLIP.REGION_MODE crops`` (first) and each ``--variant NAME KEY VALUE ...``;
every mode's model is built from the same seeded random weights (``--clip-arch`` picks the random CLIP; checked
equal), or loads ``--weights``. ``DATALOADER.NUM_WORKERS`` is 0 so that no loader process competes with the model for
the CPU (detectron2 times loading separately). Random weights say nothing about accuracy: the evaluator runs (as in
``--eval-only``) but its scores are not reported.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build  # noqa: E402
from common import (  # noqa: E402
    add_mode_arguments,
    check_mode_arguments,
    describe_machine,
    markdown_table,
    parse_variants,
    random_clip_checkpoint,
    set_threads,
)

from zegseg.data.datasets.common import load_class_list, write_label  # noqa: E402
from zegseg.data.datasets.register_coco_stuff import COCO_STUFF_SPECS, register_coco_stuff  # noqa: E402
from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.engine.trainer import ZegsegTrainer  # noqa: E402

DATASET = "coco_stuff_val_all_sem_seg"
D2_LOGGER = "detectron2.evaluation.evaluator"

_START = re.compile(r"Start inference on (\d+) batches")
_TOTAL = re.compile(r"Total inference time: (\S+) \(([0-9.]+) s / iter per device, on (\d+) devices\)")
_COMPUTE = re.compile(r"Total inference pure compute time: (\S+) \(([0-9.]+) s / iter per device, on (\d+) devices\)")


def write_fake_coco_stuff(root: Path, images: int, size: int, seed: int = 0) -> List[Path]:
    """``images`` random ``size`` x ``size`` COCO-Stuff validation images and labels under ``root``, in the layout of
    the ``coco_stuff_val_all_sem_seg`` registration (its spec's image and label folders; labels written as
    ``datasets/prepare_coco_stuff.py`` writes them). Labels: random classes on a coarse grid, some pixels ignored.
    Returns the image paths."""
    (spec,) = [s for s in COCO_STUFF_SPECS if s.name == DATASET]
    num_classes = len(load_class_list(spec.class_list).names)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(images):
        stem = f"{i + 1:012d}"
        image = root / spec.image_dir / f"{stem}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        cells = rng.integers(0, num_classes, (8, 8)).astype(np.uint8)
        cells[rng.random((8, 8)) < 0.1] = 255
        label = cv2.resize(cells, (size, size), interpolation=cv2.INTER_NEAREST)
        write_label(root / spec.label_dir / f"{stem}.png", label)
        paths.append(image)
    return paths


class _Records(logging.Handler):
    """Keeps the messages of the log records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse_d2_timing(messages: Sequence[str]) -> Dict[str, float]:
    """detectron2's numbers from the messages ``inference_on_dataset`` logged for one dataset: batches, batches it
    timed (all but the first ``min(5, batches - 1)``), seconds per batch in total and in pure compute, and the log
    lines themselves."""
    found = {}
    for pattern, key in ((_START, "start"), (_TOTAL, "total"), (_COMPUTE, "compute")):
        hits = [(m, msg) for msg in messages for m in [pattern.search(msg)] if m]
        if len(hits) != 1:
            raise RuntimeError(f"expected one detectron2 log line matching {pattern.pattern!r}, found {len(hits)}")
        found[key] = hits[0]
    batches = int(found["start"][0].group(1))
    devices = int(found["compute"][0].group(3))
    if devices != 1 or int(found["total"][0].group(3)) != 1:
        raise RuntimeError(f"timed on {devices} devices; this bench runs one process")
    return {
        "batches": batches,
        "timed": batches - min(5, batches - 1),
        "total_s": float(found["total"][0].group(2)),
        "compute_s": float(found["compute"][0].group(2)),
        "lines": [found[k][1] for k in ("start", "total", "compute")],
    }


def _count_images(model) -> List[int]:
    """Count the images that enter ``model`` (one per input dict) in a one-element list; no timing."""
    seen = [0]
    forward = model.forward

    def counting(batched_inputs, *args, **kwargs):
        seen[0] += len(batched_inputs)
        return forward(batched_inputs, *args, **kwargs)

    model.forward = counting
    return seen


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run(runs: List[Tuple[str, List[str]]], order: Sequence[str], config_file: str, weights: str, root: Path,
        images: int, size: int) -> Tuple[List[Dict], Dict[str, Dict]]:
    """Time every entry of ``order`` (mode names of ``runs``) with ``ZegsegTrainer.test`` on a fake COCO-Stuff of
    ``images`` images under ``root``; returns one record per entry and one model count per mode."""
    write_fake_coco_stuff(root / "data", images, size)
    register_coco_stuff(root / "data")
    models, cfgs, counts = {}, {}, {}
    try:
        for name, opts in runs:
            opts = opts + ["DATASETS.TEST", f"('{DATASET}',)", "DATALOADER.NUM_WORKERS", "0",
                           "OUTPUT_DIR", str(root / "output" / name)]
            torch.manual_seed(0)  # without --weights every mode gets the same random weights
            model = build(config_file, opts, weights)
            if models and not _same_weights(next(iter(models.values())), model):
                raise RuntimeError(f"mode {name} was built with other weights than the first mode")
            models[name], cfgs[name] = model, load_config(config_file, opts)
            counts[name] = _count_images(model)
        records = _Records()
        d2 = logging.getLogger(D2_LOGGER)
        level = d2.level
        d2.setLevel(logging.INFO)
        d2.addHandler(records)
        results = []
        try:
            for i, name in enumerate(order):
                before, records.messages = counts[name][0], []
                ZegsegTrainer.test(cfgs[name], models[name])
                timing = parse_d2_timing(records.messages)
                timing.update(run=i + 1, mode=name, entered=counts[name][0] - before)
                if timing["entered"] != timing["batches"] or timing["timed"] < 1:
                    raise RuntimeError(f"run {i + 1} ({name}): {timing['entered']} images entered the model, "
                                       f"detectron2 reports {timing['batches']} batches, {timing['timed']} timed")
                results.append(timing)
                print(f"[bench] run {i + 1}/{len(order)} ({name}): {timing['compute_s']:.3f} s/image",
                      file=sys.stderr, flush=True)
        finally:
            d2.removeHandler(records)
            d2.setLevel(level)
    finally:
        register_coco_stuff()  # the default root again
    return results, {name: c[0] for name, c in counts.items()}


def report(results: List[Dict], modes: Sequence[str]) -> str:
    """The per-run table, the per-mode summary (mean over its runs) and detectron2's log lines."""
    header = ["run", "mode", "images", "timed by detectron2", "pure compute s/image", "total s/image"]
    body = [[r["run"], r["mode"], r["batches"], r["timed"], r["compute_s"], r["total_s"]] for r in results]
    means = {m: float(np.mean([r["compute_s"] for r in results if r["mode"] == m])) for m in modes}
    runs_of = {m: sum(r["mode"] == m for r in results) for m in modes}
    first = modes[0]
    summary = [[m, runs_of[m], sum(r["timed"] for r in results if r["mode"] == m), means[m],
                f"{means[first] / means[m]:.2f}x"] for m in modes if runs_of[m]]
    lines = "\n".join(f"    run {r['run']} ({r['mode']}): {line}" for r in results for line in r["lines"])
    return (markdown_table(header, body) + "\n\n"
            + markdown_table(["mode", "runs", "images timed", "pure compute s/image (mean of runs)",
                              f"speed-up vs {first}"], summary)
            + "\n\ndetectron2's log lines (logger detectron2.evaluation.evaluator):\n\n" + lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser)
    parser.add_argument("--size", type=int, default=640, help="fake images are size x size")
    parser.add_argument("--images", type=int, default=8, help="fake images (detectron2 times all but min(5, N-1))")
    parser.add_argument("--order", nargs="+", default=None, metavar="MODE",
                        help="modes in the order they run, repeats allowed (default: each mode once)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all modes")
    args = parser.parse_args(argv)
    check_mode_arguments(args)
    if args.images < 2:
        raise SystemExit("--images must be >= 2 (detectron2 leaves min(5, N - 1) images untimed)")
    variants = parse_variants(args.variant, first="crops")
    names = [name for name, _ in variants]
    order = args.order or names
    unknown = sorted(set(order) - set(names))
    if unknown or len(set(names)) != len(names):
        raise SystemExit(f"--order names modes {names}; unknown: {unknown}" if unknown else f"repeated mode: {names}")
    set_threads(args.threads)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("zegseg").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        base = list(args.opts) + ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST",
                                  str(args.size)]
        if args.clip_arch:
            base += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, Path(tmp)))]
        runs = [(name, base + ["MODEL.CLIP.REGION_MODE", "crops"] + opts) for name, opts in variants]
        results, _ = run(runs, order, args.config_file, args.weights, Path(tmp), args.images, args.size)
    command = " ".join(["bench/bench_single_pass_d2timer.py"] + list(sys.argv[1:] if argv is None else argv))
    print(f"\n{describe_machine(args.device)}\n\n`python {command}`\n")
    print(f"config {args.config_file} | weights {args.weights or 'random (seeded)'} | {args.images} fake COCO-Stuff "
          f"images of {args.size} x {args.size} | ZegsegTrainer.test (detectron2's inference_on_dataset), one run per "
          f"entry of the order, DATALOADER.NUM_WORKERS 0\n")
    print(report(results, [m for m in names if m in order]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
