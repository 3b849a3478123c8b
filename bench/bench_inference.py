#!/usr/bin/env python
"""Inference speed and peak memory of a zegseg model, with random weights, on CPU or GPU.

    python bench/bench_inference.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \
        --clip-arch ViT-B/16 --images 2 --size 640
    python bench/bench_inference.py --config-file configs/toy/zegformer.yaml --images 20 --size 160

``--clip-arch`` builds a CLIP of that OpenAI architecture with random weights (no download) and saves it to a
temporary file that the model loads by path; without it, the config's CLIP is loaded. Every variant given with
``--variant NAME KEY VALUE [KEY VALUE ...]`` is measured in the same run (this machine is noisy: compare
ratios within one run). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from detectron2.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zegseg  # noqa: E402,F401
from zegseg.engine.setup_config import load_config  # noqa: E402

# OpenAI CLIP architectures: embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers.
CLIP_ARCHS = {
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
}


def random_clip_checkpoint(arch: str, folder: Path) -> Path:
    import clip.model

    if arch not in CLIP_ARCHS:
        raise SystemExit(f"unknown --clip-arch {arch!r}; known: {', '.join(CLIP_ARCHS)}")
    torch.manual_seed(0)
    path = folder / f"random_{arch.replace('/', '-')}.pt"
    torch.save(clip.model.CLIP(*CLIP_ARCHS[arch]).state_dict(), path)
    return path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(cfg, images: int, size: int, warmup: int = 1) -> Dict[str, float]:
    model = build_model(cfg).eval()
    device = model.device
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("clip_model."))
    clip_params = sum(p.numel() for p in model.clip_model.parameters())
    g = torch.Generator().manual_seed(0)
    batch = [
        {"image": torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8), "height": size, "width": size}
        for _ in range(images + warmup)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for x in batch[:warmup]:
            model([x])
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batch[warmup:]:
            model([x])
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    return {"params_M": params / 1e6, "clip_params_M": clip_params / 1e6, "s_per_image": elapsed / images,
            "images_per_s": images / elapsed, "peak_GiB": peak}


def parse_variants(raw: Sequence[Sequence[str]]) -> List[tuple]:
    variants = [("default", [])]
    for item in raw or []:
        name, opts = item[0], list(item[1:])
        if len(opts) % 2:
            raise SystemExit(f"--variant {name}: KEY VALUE pairs expected, got {opts}")
        variants.append((name, opts))
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--clip-arch", default="", help="random-weight CLIP of this architecture (e.g. ViT-B/16)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=640, help="square input side (the short side at test)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY VALUE", help="extra config")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for all variants")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = list(args.opts) + ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(args.size)]
        if args.clip_arch:
            base += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, Path(tmp)))]
        rows = []
        for name, opts in parse_variants(args.variant):
            cfg = load_config(args.config_file, base + opts)
            r = measure(cfg, args.images, args.size)
            rows.append((name, r))
            print(f"[bench] {name}: {r['s_per_image']:.2f} s/image", file=sys.stderr, flush=True)
    ref = rows[0][1]["s_per_image"]
    print(f"\nconfig: {args.config_file} | input {args.size}x{args.size} | {args.images} images | "
          f"device {cfg.MODEL.DEVICE} | threads {torch.get_num_threads()} | torch {torch.__version__}\n")
    print("| variant | params (M, w/o CLIP) | CLIP params (M) | s/image | images/s | time vs default | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['params_M']:.1f} | {r['clip_params_M']:.1f} | {r['s_per_image']:.2f} | "
              f"{r['images_per_s']:.3f} | {r['s_per_image'] / ref:.2f}x | {r['peak_GiB']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
