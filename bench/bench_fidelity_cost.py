#!/usr/bin/env python
"""What the official procedures cost next to zegseg's variants, at the reference image size.

    python bench/bench_fidelity_cost.py --size 640 853 --masks 100 --vocabularies 171 847 --repeat 5

Two steps of exact-mode inference whose official form differs from zegseg's variant:

* CLIP crops of N masks (logits upsampled to the padded input): ``zegformer`` (the official ZegFormer procedure,
  the ZegFormer reference default), ``simple_baseline`` (the official simple baseline's, the two-stage default)
  and ``roi_align`` (zegseg's variant), all to 224² crops in CLIP's normalised space;
* the semantic map of N queries and K classes: built at the padded input and then resized to the output (the
  official order, ``TEST.RESIZE_MASKS_FIRST False``) or from mask logits resized to the output first (``True``).

The variants of each step are timed interleaved, ``--repeat`` times, in one process; the table gives medians and
each variant's time over the fastest. The CLIP image encoder these crops feed costs about 240 ms per crop for
ViT-B/16 on two CPU cores (bench/README.md), so compare with N times that.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, markdown_table, set_threads  # noqa: E402

from zegseg.modeling.clip.region_encoder import RegionCLIPClassifier, normalize_for_clip  # noqa: E402
from zegseg.modeling.inference import semantic_inference  # noqa: E402
from zegseg.modeling.meta_arch.base import OpenVocabSegmentor  # noqa: E402


def interleaved(variants: Dict[str, Callable[[], object]], repeat: int) -> Dict[str, float]:
    """Median seconds of each callable, timed in turn ``repeat`` times after one warm-up each."""
    for fn in variants.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_mask_logits(num: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(N, H, W) smooth mask logits at the padded input size (upsampled from stride 4, as the models make them)."""
    low = torch.randn(num, (height + 3) // 4, (width + 3) // 4, generator=generator) * 3 - 2
    return F.interpolate(low[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def crop_rows(image: torch.Tensor, logits: torch.Tensor, repeat: int) -> List[List[object]]:
    """Crops as :meth:`RegionCLIPClassifier.encode` builds them (normalised image; the zegformer procedure on the
    padded input and float logits, the others on the image and binary masks)."""
    h, w = image.shape[-2:]
    normalised = normalize_for_clip(image, "RGB")
    padded = F.pad(normalised, (0, logits.shape[-1] - w, 0, logits.shape[-2] - h))
    variants = {}
    for procedure in ("zegformer", "simple_baseline", "roi_align"):
        classifier = RegionCLIPClassifier(procedure=procedure, input_format="RGB")
        if procedure == "zegformer":
            args = (padded, logits)
        else:
            args = (normalised, classifier.binarize(logits[:, :h, :w], (h, w)))
        variants[procedure] = lambda c=classifier, a=args: c._crops(*a, 224)
    medians = interleaved(variants, repeat)
    best = min(medians.values())
    return [[name, len(logits), f"{t * 1000:.1f}", f"{t / best:.2f}x"] for name, t in medians.items()]


def assembly_rows(logits: torch.Tensor, image_size, output_size, vocabularies, repeat: int) -> List[List[object]]:
    rows = []
    for k in vocabularies:
        probs = torch.rand(len(logits), k)

        def official(p=probs):
            scores = semantic_inference(p, logits, cls_probs=True)
            return OpenVocabSegmentor.resize_to_output(scores, image_size, *output_size)

        def masks_first(p=probs):
            masks = OpenVocabSegmentor.resize_to_output(logits, image_size, *output_size)
            return semantic_inference(p, masks, cls_probs=True)

        medians = interleaved({"official order": official, "RESIZE_MASKS_FIRST": masks_first}, repeat)
        best = min(medians.values())
        rows += [[name, k, f"{t * 1000:.1f}", f"{t / best:.2f}x"] for name, t in medians.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 853), metavar=("H", "W"), help="network input")
    parser.add_argument("--output-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--vocabularies", type=int, nargs="+", default=[171, 847])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.masks < 1 or args.repeat < 1 or min(args.size) < 1 or min(args.vocabularies) < 1:
        raise SystemExit("error: --masks, --repeat, --size and --vocabularies must be positive")
    set_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    h, w = args.size
    padded = (-(-h // 32) * 32, -(-w // 32) * 32)
    image = torch.rand(3, h, w, generator=g) * 255
    logits = random_mask_logits(args.masks, *padded, generator=g)
    with torch.inference_mode():
        crops = crop_rows(image, logits, args.repeat)
        assembly = assembly_rows(logits, (h, w), tuple(args.output_size), args.vocabularies, args.repeat)
    print(f"# Cost of the official procedures\n\n{describe_machine('cpu')}; input {h}x{w} (padded {padded[0]}x"
          f"{padded[1]}), output {args.output_size[0]}x{args.output_size[1]}, median of {args.repeat} interleaved "
          f"runs.\n\nCommand: `python bench/bench_fidelity_cost.py {' '.join(sys.argv[1:])}`\n")
    print(markdown_table(["crop procedure", "masks", "ms", "vs fastest"], crops))
    print()
    print(markdown_table(["semantic map", "classes", "ms", "vs fastest"], assembly))
    return 0


if __name__ == "__main__":
    sys.exit(main())
