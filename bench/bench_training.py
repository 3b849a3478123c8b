#!/usr/bin/env python
"""Training speed (iterations/s, images/s) and peak memory of a zegseg model on synthetic batches.

    python bench/bench_training.py --config-file configs/toy/zegformer.yaml --iters 2 --warmup 1 --batch-size 2
    python bench/bench_training.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \
        --clip-arch ViT-B/16
    python bench/bench_training.py --config-file configs/coco_stuff/two_stage_R101_vit16.yaml --clip-arch ViT-B/16 \
        --batch-size 1 --size 256 --iters 1 --warmup 0

The model is built with ``build_model(cfg)`` (random weights; MODEL.WEIGHTS is not loaded) in train mode, the
optimizer with zegseg's ``build_optimizer(cfg, model)`` as the trainer does. Each batch has the format of the
training mapper (``mask_former_semantic``): per image "image" (3, H, W) uint8, "sem_seg" (H, W) int64 and
"instances" with ``gt_classes`` (G,) int64 (sorted, distinct) and ``gt_masks`` (G, H, W) bool; images are padded
to INPUT.SIZE_DIVISIBILITY as the mapper does (zeros, ignore label). The labels are a seeded random partition of
the crop into 4-8 Voronoi regions, each a distinct training (seen) class. A timed iteration is forward, sum of the
losses, backward and optimizer step (under autocast with a gradient scaler when SOLVER.AMP.ENABLED on CUDA, or
under bfloat16 autocast when SOLVER.AMP.CPU_BFLOAT16 is also set on CPU, as the trainer); batches are made outside
the timer.

``--clip-arch`` builds a CLIP of that OpenAI architecture with random weights (no download), needed for the
COCO-Stuff configs whose CLIP weights are not on disk; the toy configs use the shipped ToyCLIP. The inference
vocabulary is set to the training one (it is not used in training; this avoids embedding it), unless
TEST.VOCABULARY is given in ``--opts``. Peak memory is CUDA's peak allocation during the timed iterations, or on
CPU the process's peak RSS (which includes building the model). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    describe_machine,
    markdown_table,
    peak_memory_gib,
    random_clip_checkpoint,
    reset_peak_memory,
    set_threads,
    synchronize,
)

from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.solver import build_optimizer  # noqa: E402

CPU_MAX_BATCH = 2  # default batch size on CPU is SOLVER.IMS_PER_BATCH capped at this
DEFAULT_SIZE = 512  # crop side when the config does not crop
MIN_REGIONS, MAX_REGIONS = 4, 8


def default_size(cfg) -> int:
    """INPUT.CROP.SIZE (its larger side) for absolute crops, else :data:`DEFAULT_SIZE`."""
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.TYPE in ("absolute", "absolute_range"):
        return int(max(crop.SIZE))
    return DEFAULT_SIZE


def synthetic_image(size: int, num_classes: int, ignore_label: int, size_divisibility: int,
                    g: torch.Generator) -> Dict:
    """One training input as the mask_former_semantic mapper returns it, for a random partition of the crop."""
    k = int(torch.randint(MIN_REGIONS, MAX_REGIONS + 1, (1,), generator=g))
    k = min(k, num_classes)
    seeds = torch.rand(k, 2, generator=g) * size
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords[None, :, None] - seeds[:, 0, None, None]  # (k, H, 1)
    dx = coords[None, None, :] - seeds[:, 1, None, None]  # (k, 1, W)
    dist = dy**2 + dx**2
    region = dist.argmin(dim=0)  # (H, W) Voronoi cell of each pixel
    labels = torch.randperm(num_classes, generator=g)[:k]
    sem_seg = labels[region]
    image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    if size_divisibility > 0:
        pad = -size % size_divisibility
        image = F.pad(image, (0, pad, 0, pad), value=0)
        sem_seg = F.pad(sem_seg, (0, pad, 0, pad), value=ignore_label)
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    instances = Instances(tuple(sem_seg.shape))
    instances.gt_classes = classes
    instances.gt_masks = sem_seg[None] == classes[:, None, None]
    return {"image": image, "sem_seg": sem_seg, "instances": instances, "height": size, "width": size}


def train_step(model, optimizer, batch: List[Dict], scaler, cpu_bf16: bool = False) -> float:
    """detectron2's SimpleTrainer / AMPTrainer step, or zegseg's CPUAutocastTrainer step with ``cpu_bf16`` (without
    their metrics); returns the total loss."""
    amp = scaler is not None
    if amp:
        autocast = torch.autocast(device_type="cuda", dtype=torch.float16)
    elif cpu_bf16:
        autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    else:
        autocast = nullcontext()
    with autocast:
        loss_dict = model(batch)
        losses = loss_dict if isinstance(loss_dict, torch.Tensor) else sum(loss_dict.values())
    optimizer.zero_grad()
    if amp:
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses.backward()
        optimizer.step()
    return float(losses.detach())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--batch-size", type=int, default=0,
                        help=f"images per iteration (default: SOLVER.IMS_PER_BATCH, at most {CPU_MAX_BATCH} on CPU)")
    parser.add_argument("--size", type=int, default=0,
                        help=f"square crop side (default: INPUT.CROP.SIZE when cropping, else {DEFAULT_SIZE})")
    parser.add_argument("--clip-arch", default="", help="random-weight CLIP of this architecture (e.g. ViT-B/16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides (last)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    set_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        return bench(args, Path(tmp))


def bench(args: argparse.Namespace, tmp: Path) -> int:
    opts = ["MODEL.DEVICE", args.device]
    if args.clip_arch:
        opts += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, tmp))]
    cfg = load_config(args.config_file, opts + list(args.opts))
    if not cfg.DATASETS.TRAIN:
        raise SystemExit("DATASETS.TRAIN is empty: no training vocabulary")
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if not cfg.TEST.VOCABULARY:
        cfg.TEST.VOCABULARY = list(meta.stuff_classes)
        cfg.TEST.UNSEEN_CLASSES = []
    device = torch.device(cfg.MODEL.DEVICE)
    batch_size = args.batch_size or (
        cfg.SOLVER.IMS_PER_BATCH if device.type == "cuda" else min(cfg.SOLVER.IMS_PER_BATCH, CPU_MAX_BATCH)
    )
    size = args.size or default_size(cfg)
    if not args.batch_size and batch_size < cfg.SOLVER.IMS_PER_BATCH:
        print(f"[bench_training] batch size {batch_size} on CPU (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}); "
              "set --batch-size to change it", file=sys.stderr, flush=True)

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    print(f"[bench_training] model and optimizer built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)

    num_classes = len(model.train_class_names)
    if num_classes == 0:
        raise SystemExit(f"{cfg.DATASETS.TRAIN[0]} has no classes to train on")
    ignore_label = int(getattr(meta, "ignore_label", 255))
    use_amp = cfg.SOLVER.AMP.ENABLED and device.type == "cuda"
    cpu_bf16 = cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.CPU_BFLOAT16 and device.type == "cpu"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    precision = "float16 AMP" if use_amp else "bfloat16 autocast" if cpu_bf16 else "off"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(args.seed)

    def make_batch() -> List[Dict]:
        return [synthetic_image(size, num_classes, ignore_label, cfg.INPUT.SIZE_DIVISIBILITY, g)
                for _ in range(batch_size)]

    for i in range(args.warmup):
        train_step(model, optimizer, make_batch(), scaler, cpu_bf16)
        print(f"[bench_training] warm-up {i + 1}/{args.warmup} done", file=sys.stderr, flush=True)
    synchronize(device)
    reset_peak_memory(device)
    elapsed, loss = 0.0, float("nan")
    for i in range(args.iters):
        batch = make_batch()
        synchronize(device)
        start = time.perf_counter()
        loss = train_step(model, optimizer, batch, scaler, cpu_bf16)
        synchronize(device)
        elapsed += time.perf_counter() - start
        print(f"[bench_training] iteration {i + 1}/{args.iters}: {elapsed / (i + 1):.2f} s/iter",
              file=sys.stderr, flush=True)
    peak = peak_memory_gib(device)
    input_side = batch[0]["image"].shape[-1]

    s_per_iter = elapsed / args.iters
    print(f"\n{describe_machine(device)}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"{cfg.MODEL.META_ARCHITECTURE} | {num_classes} training classes | {trainable / 1e6:.1f}M trainable "
          f"parameters | optimizer {cfg.SOLVER.OPTIMIZER} | AMP {precision} | "
          f"{args.warmup} warm-up + {args.iters} timed iterations | peak memory: "
          f"{'CUDA allocated, timed iterations' if device.type == 'cuda' else 'process RSS'}\n")
    header = ["config", "batch", "size", "input (padded)", "s/iter", "iters/s", "images/s", "peak GiB", "last loss"]
    row = [args.config_file, batch_size, size, input_side, s_per_iter, 1 / s_per_iter, batch_size / s_per_iter,
           peak, loss]
    print(markdown_table(header, [row]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
