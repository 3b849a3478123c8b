#!/usr/bin/env python
"""Text-encoding time of zegseg's ``TextEmbedder`` against its disk-cache and memory-cache hits.

    python bench/bench_text.py
    python bench/bench_text.py --vocabularies coco_stuff_171 ade20k_full_847 --templates selected8 \
        --clip-arch ViT-B/16
    python bench/bench_text.py --quick

For each vocabulary (a packaged class list, ``zegseg/data/datasets/class_names/<name>.json``; a trailing
``_<K>`` such as ``coco_stuff_171`` is checked against the list's length) and the prompt-template set
``--templates``, with a CLIP of ``--clip-arch`` whose weights are random (saved to a temporary file, nothing is
downloaded), it measures:

* uncached: a fresh ``TextEmbedder`` with an empty temporary cache folder embeds the vocabulary (this is also what an
  implementation that re-encodes the prompts for every image pays per image; it includes writing the small cache
  file);
* disk hit: a new ``TextEmbedder`` on the same folder and the same checkpoint fingerprint reads that file;
* memory hit: the first embedder is called again.

The three embeddings must be identical (``torch.equal``), else the script fails. The one-time SHA-256 of the
checkpoint (the fingerprint in the cache keys, computed once per process) is timed separately. ``--quick``
keeps the first 20 class names and the "single" template set (a smoke test that runs in seconds). Ratios are
measured within one run. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, markdown_table, random_clip_checkpoint, set_threads, time_call  # noqa: E402

from zegseg.data.datasets.common import load_class_list  # noqa: E402
from zegseg.modeling.clip import checkpoint_fingerprint, load_clip  # noqa: E402
from zegseg.modeling.clip.prompts import get_templates  # noqa: E402
from zegseg.modeling.clip.text_encoder import TextEmbedder, clip_text_encoder, split_synonyms  # noqa: E402

QUICK_CLASSES = 20
QUICK_TEMPLATES = "single"


def vocabulary(name: str) -> List[str]:
    """Class names of a packaged class list: ``coco_stuff``, or ``coco_stuff_171`` (length checked)."""
    try:
        return list(load_class_list(name).names)
    except ValueError:
        match = re.fullmatch(r"(.+)_(\d+)", name)
        if not match:
            raise
    names = list(load_class_list(match.group(1)).names)
    if len(names) != int(match.group(2)):
        raise SystemExit(f"vocabulary {name!r}: class list {match.group(1)!r} has {len(names)} classes")
    return names


def ratio(a: float, b: float) -> str:
    """``a / b`` as "12.3x" or "3,025x" (no exponent)."""
    r = a / b
    return f"{r:,.0f}x" if r >= 100 else f"{r:.3g}x"


def measure(clip_model, templates: Sequence[str], names: List[str], cache_dir: Path, device: str,
            repeat: int) -> Tuple[float, float, float]:
    """Seconds of an uncached call, a disk-cache hit and a memory-cache hit; checks the three agree."""
    cold = TextEmbedder(clip_model, templates, cache_dir=cache_dir)
    if cold.cache_dir is None:
        raise SystemExit("the CLIP model has no checkpoint fingerprint: the disk cache is disabled")
    out = {}

    def uncached():
        out["uncached"] = cold(names)

    t_uncached = time_call(uncached, repeat=1, warmup=0, device=device)
    if not any(cache_dir.glob("*.pt")):
        raise SystemExit(f"the uncached call wrote no cache file under {cache_dir}")

    warm = [TextEmbedder(clip_model, templates, cache_dir=cache_dir) for _ in range(repeat)]

    def disk_hit():
        out["disk"] = warm.pop()(names)

    t_disk = time_call(disk_hit, repeat=repeat, warmup=0, device=device)

    def memory_hit():
        out["memory"] = cold(names)

    t_memory = time_call(memory_hit, repeat=repeat, warmup=0, device=device)

    for key in ("disk", "memory"):
        if not torch.equal(out["uncached"], out[key]):
            diff = (out["uncached"].float() - out[key].float()).abs().max().item()
            raise SystemExit(f"FAIL: {key}-cache embeddings differ from the uncached ones (max |diff| {diff:.3g})")
    return t_uncached, t_disk, t_memory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabularies", nargs="+", default=["coco_stuff_171", "ade20k_full_847"],
                        help="packaged class lists (zegseg/data/datasets/class_names), optionally suffixed _<K>")
    parser.add_argument("--templates", default="selected8", help="prompt-template set (prompts.TEMPLATE_SETS)")
    parser.add_argument("--clip-arch", default="ViT-B/16", help="random-weight CLIP of this OpenAI architecture")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls averaged for the cache hits")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help=f"first {QUICK_CLASSES} class names and the {QUICK_TEMPLATES!r} template set")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    template_set = QUICK_TEMPLATES if args.quick else args.templates
    templates = get_templates(template_set)
    vocabs = {name: vocabulary(name) for name in args.vocabularies}
    if args.quick:
        vocabs = {name: names[:QUICK_CLASSES] for name, names in vocabs.items()}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = random_clip_checkpoint(args.clip_arch, tmp)
        clip_model = load_clip(str(ckpt), device=args.device)
        checkpoint_fingerprint.cache_clear()
        t_fingerprint = time_call(lambda: checkpoint_fingerprint(str(ckpt)), repeat=1, warmup=0)
        clip_text_encoder(clip_model)(["a photo of a warm-up."] * 2)  # first-call set-up (CUDA context, kernels)
        for i, (name, names) in enumerate(vocabs.items()):
            start = time.perf_counter()
            t_uncached, t_disk, t_memory = measure(
                clip_model, templates, names, tmp / f"cache_{i}", args.device, args.repeat
            )
            prompts = sum(len(split_synonyms(n)) for n in names) * len(templates)
            rows.append([name, len(names), prompts, t_uncached, t_uncached, t_disk, t_memory,
                         ratio(t_uncached, t_disk), ratio(t_uncached, t_memory)])
            print(f"[bench_text] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    print(f"\n{describe_machine(args.device)}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"CLIP {args.clip_arch} (random weights) on {args.device} | templates {template_set!r} ({len(templates)}) "
          f"| timed calls per cache hit: {args.repeat} | checkpoint fingerprint (once per process): "
          f"{t_fingerprint:.3g} s\n")
    header = ["vocabulary", "classes", "prompts", "uncached s", "per image, no cache s", "disk hit s",
              "memory hit s", "uncached / disk hit", "uncached / memory hit"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
