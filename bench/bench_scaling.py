#!/usr/bin/env python
"""How inference time scales with the number of masks sent to CLIP and with the vocabulary size.

    python bench/bench_scaling.py --config-file configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml \\
        --clip-arch ViT-B/16 --masks 10 25 50 100 --vocabularies 20 171 847
    python bench/bench_scaling.py --config-file configs/toy/zegformer.yaml --size 160 --masks 4 8 16 32 \\
        --vocabularies 20 35

Part 1, masks: the CLIP image branch (:class:`zegseg.modeling.clip.RegionCLIPClassifier`: binarise, crop,
image encoder, text similarity) on N random masks of one ``--size`` image, all crops at once (batched, chunked by
MODEL.CLIP.CHUNK_SIZE, as zegseg runs) versus one mask per call (as per-mask reference loops do).

Part 2, vocabulary: the whole model (random weights, exact mode) per image with K classes, text embeddings
already cached (their one-off cost is what ``bench/bench_text.py`` measures). K classes are the first K of the
847 ADE20k-Full names; the model's prompt set is replaced by a single template to keep the one-off embedding short
(it does not change the per-image cost). The vocabularies take turns image by image (a cache hit switches them),
so that the machine's drift affects all of them alike. Ratios are to the first vocabulary size.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build  # noqa: E402
from common import (  # noqa: E402
    ClipProbe,
    describe_machine,
    markdown_table,
    random_clip_checkpoint,
    set_threads,
    synchronize,
    time_call,
)

from zegseg.data.datasets.common import load_class_list  # noqa: E402


def random_masks(num: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(num, size, size) float mask logits of random axis-aligned blobs covering 2-50 % of the image."""
    ys = torch.arange(size).view(1, size, 1)
    xs = torch.arange(size).view(1, 1, size)
    centre = torch.rand(num, 2, generator=generator) * size
    half = (0.07 + torch.rand(num, 2, generator=generator) * 0.28) * size
    inside = ((ys - centre[:, 0, None, None]).abs() < half[:, 0, None, None]) & (
        (xs - centre[:, 1, None, None]).abs() < half[:, 1, None, None]
    )
    return torch.where(inside, 4.0, -4.0)


def bench_masks(model, counts: List[int], size: int, repeat: int) -> List[list]:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8).to(model.device)
    classifier, clip_model, text = model.region_classifier, model.clip_model, model.text_embeddings
    rows = []
    with torch.inference_mode():
        for n in counts:
            masks = random_masks(n, size, g).to(model.device)
            batched = time_call(lambda m=masks: classifier(clip_model, image, m, text), repeat=repeat,
                                device=model.device)
            single = time_call(lambda m=masks: [classifier(clip_model, image, x[None], text) for x in m],
                               repeat=repeat, device=model.device)
            rows.append([n, batched, batched / n * 1000, single, f"{single / batched:.2f}x"])
            print(f"[bench] {n} masks: batched {batched:.2f} s, one by one {single:.2f} s", file=sys.stderr)
    return rows


def bench_vocabulary(model, sizes: List[int], size: int, images: int) -> List[list]:
    names = load_class_list("ade20k_full").names
    if max(sizes) > len(names):
        raise SystemExit(f"--vocabularies: at most {len(names)} classes (ADE20k-Full)")
    g = torch.Generator().manual_seed(1)
    batch = [{"image": torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)}
             for _ in range(images)]
    probe = ClipProbe(model)
    timed = {k: [0.0, 0.0, 0.0] for k in sizes}  # seconds: total, network, CLIP
    with torch.inference_mode():
        for k in sizes:  # embeds the vocabulary once (cached from then on) and warms the allocator up
            model.set_vocabulary(names[:k])
            model(batch[:1])
        for x in batch:  # vocabularies interleaved image by image, so that drift of the machine hits all alike
            for k in sizes:
                model.set_vocabulary(names[:k])
                probe.reset()
                synchronize(model.device)
                start = time.perf_counter()
                model([x])
                synchronize(model.device)
                for i, t in enumerate((time.perf_counter() - start, probe.network_seconds, probe.clip_seconds)):
                    timed[k][i] += t / images
    rows, first = [], timed[sizes[0]][0]
    for k in sizes:
        total, network, clip_s = timed[k]
        rows.append([k, total, network, clip_s, total - network - clip_s, f"{total / first:.2f}x"])
        print(f"[bench] {k} classes: {total:.2f} s/image", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--clip-arch", default="", help="random-weight CLIP of this architecture (e.g. ViT-B/16)")
    parser.add_argument("--size", type=int, default=640, help="square input side")
    parser.add_argument("--masks", type=int, nargs="*", default=[10, 25, 50, 100], help="part 1 mask counts")
    parser.add_argument("--vocabularies", type=int, nargs="*", default=[20, 171, 847], help="part 2 sizes")
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions per mask count")
    parser.add_argument("--images", type=int, default=1, help="timed images per vocabulary size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        raise SystemExit(f"config file not found: {args.config_file}")
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        opts = list(args.opts) + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, "INPUT.MIN_SIZE_TEST",
                                  str(args.size), "MODEL.CLIP.TEMPLATES", "single", "MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH",
                                  "True"]
        if args.clip_arch:
            opts += ["MODEL.CLIP.NAME", str(random_clip_checkpoint(args.clip_arch, Path(tmp)))]
        torch.manual_seed(0)
        model = build(args.config_file, opts, "")
        mask_rows = bench_masks(model, args.masks, args.size, args.repeat) if args.masks else []
        vocab_rows = bench_vocabulary(model, args.vocabularies, args.size, args.images) if args.vocabularies else []
    print(f"\n{describe_machine(model.device)}\n\n`python {' '.join(sys.argv)}`\n")
    print(f"config {args.config_file} | input {args.size}x{args.size} | CLIP chunk size "
          f"{model.region_classifier.chunk_size}\n")
    if mask_rows:
        print(markdown_table(["masks", "batched s", "batched ms/mask", "one-by-one s", "one-by-one / batched"],
                             mask_rows) + "\n")
    if vocab_rows:
        print(markdown_table(["classes", "s/image", "network s", "CLIP s", "rest s", "vs first"], vocab_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
