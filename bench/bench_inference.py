#!/usr/bin/env python
"""Inference speed, where the time goes, and peak memory of a zegseg model with random weights.

    python bench/bench_inference.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \\
        --clip-arch ViT-B/16 --images 2 --size 640 --clip-floor 100 \\
        --variant no_clip_branch MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH False \\
        --variant fast MODEL.CLIP.FAST_MODE.ENABLED True
    python bench/bench_inference.py --config-file configs/toy/zegformer.yaml --images 20 --size 160

``--clip-arch`` builds a CLIP of that OpenAI architecture with random weights (no download) that the model loads
by path; without it, the config's CLIP is loaded (the toy configs' ToyCLIP ships with zegseg). Every variant given
with ``--variant NAME KEY VALUE [KEY VALUE ...]`` is measured in the same run, each in its own process so that
its peak memory is its own (compare times as ratios within one run: machines are noisy). ``--weights`` loads a
checkpoint (e.g. a trained toy model; random weights otherwise). Input images are random.

Columns: seconds per image in total, in the segmentation network (backbone + pixel decoder + transformer
decoder), in the CLIP image branch (crops + image encoder) and in the rest (mask upsampling, ensemble, semantic
map, resizing); crops sent to CLIP per image; with ``--clip-floor N``, "vs floor" = total / (network + the time
of one batched CLIP image-encoder forward per crop × crops), the floor of any implementation that runs the same
network and classifies the same crops.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ClipProbe,
    describe_machine,
    markdown_table,
    parse_variants,
    peak_memory_gib,
    random_clip_checkpoint,
    reset_peak_memory,
    run_isolated,
    set_threads,
    synchronize,
    time_call,
)
from detectron2.modeling import build_model  # noqa: E402

import zegseg  # noqa: E402,F401
from zegseg.checkpoint import ZegsegCheckpointer  # noqa: E402
from zegseg.engine.setup_config import load_config  # noqa: E402


def build(config_file: str, opts: List[str], weights: str):
    """The model of ``config_file`` + ``opts`` in eval mode, with ``weights`` loaded when given."""
    cfg = load_config(config_file, opts)
    model = build_model(cfg).eval()
    if weights:
        ZegsegCheckpointer(model, partial_ok=cfg.MODEL.WEIGHTS_PARTIAL_OK).load(weights)
    return model


def clip_floor(model, crops: int, repeat: int = 1) -> float:
    """Seconds per crop of one batched CLIP image-encoder forward over ``crops`` random crops (fp32 on CPU,
    autocast on CUDA, as the region classifier runs)."""
    clip_model = model.clip_model
    size = int(clip_model.visual.input_resolution)
    x = torch.randn(crops, 3, size, size, device=model.device)
    amp = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device_type=model.device.type, enabled=amp):
        return time_call(lambda: clip_model.encode_image(x), repeat=repeat, warmup=1, device=model.device) / crops


def measure(config_file: str, opts: List[str], weights: str, images: int, size: int, warmup: int, threads: int,
            floor_crops: int) -> Dict[str, float]:
    set_threads(threads)
    torch.manual_seed(0)  # every variant gets the same random weights (each runs in a fresh process)
    model = build(config_file, opts, weights)
    device = model.device
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("clip_model."))
    g = torch.Generator().manual_seed(0)
    batch = [
        {"image": torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8), "height": size, "width": size}
        for _ in range(images + warmup)
    ]
    probe = ClipProbe(model)
    reset_peak_memory(device)
    with torch.inference_mode():
        for x in batch[:warmup]:
            model([x])
        probe.reset()
        synchronize(device)
        start = time.perf_counter()
        for x in batch[warmup:]:
            model([x])
        synchronize(device)
        elapsed = time.perf_counter() - start
    result = {
        "params_M": params / 1e6,
        "clip_params_M": sum(p.numel() for p in model.clip_model.parameters()) / 1e6,
        "s_per_image": elapsed / images,
        "network_s": probe.network_seconds / images,
        "clip_s": probe.clip_seconds / images,
        "crops": probe.crops / images,
        "peak_GiB": peak_memory_gib(device),
        "threads": torch.get_num_threads(),
        "machine": describe_machine(device),
    }
    if floor_crops:
        result["floor_s_per_crop"] = clip_floor(model, floor_crops)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--clip-arch", default="", help="random-weight CLIP of this architecture (e.g. ViT-B/16)")
    parser.add_argument("--weights", default="", help="model checkpoint to load (default: random weights)")
    parser.add_argument("--images", type=int, default=2, help="timed images per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images per variant first")
    parser.add_argument("--size", type=int, default=640, help="square input side (the short side at test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clip-floor", type=int, default=0, metavar="N",
                        help="also time one batched CLIP forward over N crops (in the first variant's process)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY VALUE", help="extra config")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all variants")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise SystemExit("--images must be at least 1")
    if not Path(args.config_file).is_file():
        raise SystemExit(f"config file not found: {args.config_file}")
    with tempfile.TemporaryDirectory() as tmp:
        base = list(args.opts) + ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(args.size),
                                  "MODEL.DEVICE", args.device]
        if args.clip_arch:
            base += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, Path(tmp)))]
        rows = []
        for i, (name, opts) in enumerate(parse_variants(args.variant)):
            r = run_isolated(measure, args.config_file, base + opts, args.weights, args.images, args.size,
                             args.warmup, args.threads, args.clip_floor if i == 0 else 0)
            rows.append((name, r))
            print(f"[bench] {name}: {r['s_per_image']:.3f} s/image", file=sys.stderr, flush=True)
    ref = rows[0][1]
    floor = ref.get("floor_s_per_crop")
    print(f"\n{ref['machine']}\n\n`python {' '.join(sys.argv)}`\n")
    print(f"config {args.config_file} | input {args.size}x{args.size} | {args.images} timed images per variant after "
          f"{args.warmup} warm-up | {ref['params_M']:.1f} M parameters + {ref['clip_params_M']:.1f} M frozen CLIP\n")
    if floor:
        print(f"CLIP floor: one batched image-encoder forward over {args.clip_floor} crops = "
              f"{floor * args.clip_floor:.2f} s ({floor * 1000:.1f} ms per crop)\n")
    header = ["variant", "s/image", "images/s", "network s", "CLIP s", "rest s", "crops to CLIP", "time vs first",
              "peak GiB"] + (["vs floor"] if floor else [])
    table = []
    for name, r in rows:
        rest = r["s_per_image"] - r["network_s"] - r["clip_s"]
        row = [name, r["s_per_image"], 1 / r["s_per_image"], r["network_s"], r["clip_s"], rest, f"{r['crops']:.1f}",
               f"{r['s_per_image'] / ref['s_per_image']:.2f}x", r["peak_GiB"]]
        if floor:
            row.append(f"{r['s_per_image'] / (r['network_s'] + floor * r['crops']):.2f}x")
        table.append(row)
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
