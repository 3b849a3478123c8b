"""Shared by the benchmark scripts: random-weight CLIP checkpoints, timers, peak memory, Markdown output.

Benchmarks report ratios measured within one run (machines are noisy) and never download anything: a CLIP of
an OpenAI architecture is built with random weights and saved to a temporary file that the model loads by path.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = [
    "CLIP_ARCHS",
    "ClipProbe",
    "parse_variants",
    "run_isolated",
    "ROOT",
    "describe_machine",
    "markdown_table",
    "peak_memory_gib",
    "random_clip_checkpoint",
    "reset_peak_memory",
    "set_threads",
    "synchronize",
    "time_call",
]

# OpenAI CLIP architectures: embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers.
CLIP_ARCHS = {
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def random_clip_checkpoint(arch: str, folder: Path) -> Path:
    """Save a CLIP of OpenAI architecture ``arch`` with random (seeded) weights under ``folder``; return the path."""
    import clip.model

    if arch not in CLIP_ARCHS:
        raise SystemExit(f"unknown CLIP architecture {arch!r}; known: {', '.join(CLIP_ARCHS)}")
    torch.manual_seed(0)
    path = Path(folder) / f"random_{arch.replace('/', '-')}.pt"
    torch.save(clip.model.CLIP(*CLIP_ARCHS[arch]).state_dict(), path)
    return path


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the benches that compare modes of one model: config, weights, random CLIP, device,
    threads, ``--variant NAME KEY VALUE ...`` (repeatable). Add ``--opts`` last (:func:`check_mode_arguments`)."""
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="trained checkpoint; default: seeded random weights")
    parser.add_argument("--clip-arch", default="", help="random-weight CLIP of this architecture (e.g. ViT-B/16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY VALUE", help="extra mode")


def check_mode_arguments(args: argparse.Namespace) -> None:
    """Stop with one line when the config file or the checkpoint of :func:`add_mode_arguments` is missing."""
    if not Path(args.config_file).is_file():
        raise SystemExit(f"config file not found: {args.config_file}")
    if args.weights and not Path(args.weights).is_file():
        raise SystemExit(f"checkpoint not found: {args.weights}")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work (a no-op on CPU) so that wall-clock timers are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, repeat: int = 1, warmup: int = 1, device: str = "cpu") -> float:
    """Mean wall-clock seconds of ``fn()`` over ``repeat`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / max(repeat, 1)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window (CUDA only; on CPU the process's peak RSS cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: torch.device | str) -> float:
    """Peak CUDA memory allocated since :func:`reset_peak_memory`, or the process's peak RSS on CPU, in GiB."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def describe_machine(device: torch.device | str = "cpu") -> str:
    """One line: date, CPU/GPU, threads, torch version."""
    if torch.device(device).type == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{date.today().isoformat()} | {hw} | torch {torch.__version__} | python {platform.python_version()}"


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats are printed with 3 significant digits."""

    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_variants(raw: Sequence[Sequence[str]] | None, first: str = "default") -> List[Tuple[str, List[str]]]:
    """``--variant NAME KEY VALUE ...`` arguments → [(name, [KEY, VALUE, ...])], preceded by ``(first, [])``."""
    variants = [(first, [])]
    for item in raw or []:
        name, opts = item[0], list(item[1:])
        if len(opts) % 2:
            raise SystemExit(f"--variant {name}: KEY VALUE pairs expected, got {opts}")
        variants.append((name, opts))
    return variants


def _child(queue, fn, args) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report any failure to the parent instead of hanging it
        queue.put(("error", f"{type(e).__name__}: {e}"))


def run_isolated(fn: Callable[..., Dict], *args) -> Dict:
    """Run ``fn(*args)`` in a fresh process and return its (picklable) result, so that the CPU peak RSS that
    :func:`peak_memory_gib` reports belongs to this measurement alone. ``fn`` must be a module-level function."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    status, result = queue.get()
    proc.join()
    if status != "ok":
        raise SystemExit(f"benchmark child failed: {result}")
    return result


class ClipProbe:
    """Images, CLIP calls, crops and seconds spent in a model's CLIP image branch, and seconds in its network.

    Images are counted where they enter the model (``model.forward`` at inference: one per input dict), never per
    CLIP call (a model may call CLIP more than once per image). Wraps
    ``model.region_classifier.encode`` (CLIP calls, crops encoded, seconds) and ``model.predict`` (backbone, pixel
    decoder, transformer decoder) of a :class:`~zegseg.modeling.meta_arch.MaskClassificationSegmentor`; a model
    without a CLIP image branch reports 0 calls and crops.
    """

    def __init__(self, model) -> None:
        self.clip_seconds = 0.0
        self.network_seconds = 0.0
        self.crops = 0
        self.clip_calls = 0
        self.images = 0
        self.device = model.device
        if getattr(model, "region_classifier", None) is not None:
            model.region_classifier.encode = self._timed(model.region_classifier.encode, "clip_seconds", count=True)
        if hasattr(model, "predict"):
            model.predict = self._timed(model.predict, "network_seconds")
        model.forward = self._counting_images(model, model.forward)

    def _counting_images(self, model, forward: Callable) -> Callable:
        def wrapper(batched_inputs, *args, **kwargs):
            if not model.training:
                self.images += len(batched_inputs)
            return forward(batched_inputs, *args, **kwargs)

        return wrapper

    def _timed(self, fn: Callable, field: str, count: bool = False) -> Callable:
        def wrapper(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            setattr(self, field, getattr(self, field) + time.perf_counter() - start)
            if count:
                self.crops += int(out[1].sum())
                self.clip_calls += 1
            return out

        return wrapper

    def per_image(self) -> Dict[str, float]:
        """CLIP calls, crops, CLIP seconds and network seconds per image counted so far (``nan`` before any)."""
        n = self.images or float("nan")
        return {"clip_calls": self.clip_calls / n, "crops": self.crops / n, "clip_s": self.clip_seconds / n,
                "network_s": self.network_seconds / n}

    def reset(self) -> None:
        self.clip_seconds = self.network_seconds = 0.0
        self.crops = self.clip_calls = self.images = 0
