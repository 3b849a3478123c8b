#!/usr/bin/env python
"""Inference time of zegseg next to the official implementation, same weights, same images, alternating.

    python bench/bench_official_side_by_side.py --official-root /path/to/ZegFormer --model zegformer \\
        --official-pythonpath /path/to/timm-folder --size 640 --images 3
    python bench/bench_official_side_by_side.py --official-root /path/to/zsseg.baseline --model two_stage \\
        --size 640 --images 3

Both models are built as ``tools/check_official_parity.py`` builds them (the official one from its own COCO-Stuff
config in its own process, with random weights that zegseg loads through its converter; one random CLIP for
both; fp32 on the CPU; COCO-Stuff's 171 classes). The official process stays alive and times one image whenever
asked, so the two implementations take turns image by image (the order flips every image) and a machine whose
speed drifts slows both alike. Each image is timed twice, by wall clock and by the CPU time of the process that
ran it (an independent measure: it does not count time the process waited for the CPU). Every time covers one
full ``model([{"image": ...}])`` call with the CLIP image branch on (preprocessing, network, one CLIP forward per
mask crop, ensemble, semantic map, resizing). Before timing, the two outputs on the first image are compared.

``--clip ViT-B/16-image`` (the default) is ViT-B/16's image tower with a one-layer text tower: both
implementations embed the vocabulary before the first image, so per-image times are those of ViT-B/16; the text
tower only costs set-up time (``--clip ViT-B/16`` for the full model: about 10 more minutes of set-up on two cores).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, markdown_table, set_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _parity_tool():
    spec = importlib.util.spec_from_file_location("check_official_parity", REPO / "tools" / "check_official_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parity = _parity_tool()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-root", required=True, help="official checkout: ZegFormer or zsseg.baseline")
    parser.add_argument("--model", choices=sorted(parity.MODELS), required=True)
    parser.add_argument("--config", help="zegseg config (default: the matching configs/coco_stuff/ reference config)")
    parser.add_argument("--clip", choices=sorted(parity.CLIP_ARCHS), default="ViT-B/16-image")
    parser.add_argument("--size", type=int, default=640, help="square test image size in pixels")
    parser.add_argument("--images", type=int, default=3, help="timed images per implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads here (0: torch's default)")
    parser.add_argument("--workdir", help="folder for the shared CLIP, images and outputs (default: a temp dir)")
    parser.add_argument("--official-pythonpath", nargs="*", default=[], help="folders with the official code's deps")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the official code")
    parser.add_argument("--output", help="also write the markdown report to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="zegseg config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 32:
        parser.error("--images must be positive and --size at least 32")
    if not (Path(args.official_root) / "mask_former").is_dir():
        parser.error(f"--official-root {args.official_root!r} is not an official checkout (no mask_former/ folder)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    parity = _parity_tool()
    import zegseg  # noqa: F401  (registers the datasets)
    from zegseg.modeling.vocabulary import dataset_vocabulary

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zegseg_side_by_side_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    names, unseen = dataset_vocabulary("coco_stuff_val_all_sem_seg")
    torch.save(parity.random_clip_state(args.clip, args.seed), workdir / "clip.pt")
    first = parity.synthetic_image(args.size, args.seed)
    torch.save(first, workdir / "image.pt")
    spec = {
        "names": names, "unseen": unseen, "seed": args.seed, "keys_only": False,
        "clip": str(workdir / "clip.pt"), "image": str(workdir / "image.pt"),
        "config": parity.MODELS[args.model]["official_config"],
    }
    print(f"[side-by-side] building the official {args.model} ({args.official_root}), CLIP {args.clip}", flush=True)
    start = time.perf_counter()
    official = parity.OfficialServer(args, workdir, spec)
    official_build = time.perf_counter() - start
    try:
        start = time.perf_counter()
        cfg, model = parity.build_zegseg(args, workdir, names, unseen)
        parity.load_official_weights(args, cfg, model, official.payload["state_dict"])
        parity._zegseg_final(model, first, True)  # embeds the vocabulary (the official model did so while building)
        zegseg_build = time.perf_counter() - start
        agreement = parity.compare(
            "scores, CLIP branch on", parity._zegseg_final(model, first, True), official.payload["scores_clip_on"],
            "argmax_classes_first",
        )
        print(f"[side-by-side] first image: max |diff| {agreement['max_abs']:.3g}, argmax agreement "
              f"{100 * agreement['agreement']:.3f} %", flush=True)
        times = {"official": [], "zegseg": []}
        for i in range(args.images):
            image = parity.synthetic_image(args.size, args.seed + 1 + i)
            order = ("official", "zegseg") if i % 2 == 0 else ("zegseg", "official")
            for side in order:
                if side == "official":
                    times[side].append(official.time_image(image, i))
                    continue
                wall, cpu = time.perf_counter(), time.process_time()
                parity._zegseg_final(model, image, True)
                times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
            print(f"[side-by-side] image {i + 1}/{args.images}: official {times['official'][-1][0]:.2f} s, "
                  f"zegseg {times['zegseg'][-1][0]:.2f} s", flush=True)
    finally:
        official.close()

    def row(side: str) -> List[object]:
        walls, cpus = zip(*times[side])
        base_wall = statistics.median(w for w, _ in times["official"])
        base_cpu = statistics.median(c for _, c in times["official"])
        return [
            side, " / ".join(f"{w:.2f}" for w in walls), f"{statistics.median(walls):.2f}",
            f"{statistics.median(walls) / base_wall:.2f}x", f"{statistics.median(cpus):.2f}",
            f"{statistics.median(cpus) / base_cpu:.2f}x",
        ]

    header = ["implementation", "wall s per image", "median", "vs official", "CPU s (median)", "vs official"]
    report = (
        f"# zegseg next to the official {args.model} code\n\n{describe_machine('cpu')}; {args.size}x{args.size} "
        f"synthetic images, {len(names)} classes, random weights (CLIP {args.clip}), fp32, CLIP image branch on; "
        f"{args.images} images per implementation, alternating.\n\n"
        f"Command: `python bench/bench_official_side_by_side.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f"\n\nSet-up (build + vocabulary): official {official_build:.0f} s, zegseg {zegseg_build:.0f} s. First image: "
        f"final scores max |diff| {agreement['max_abs']:.3g}, argmax agreement {100 * agreement['agreement']:.3f} %."
        f"\n\n{markdown_table(header, [row('official'), row('zegseg')])}\n"
    )
    print(report)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
