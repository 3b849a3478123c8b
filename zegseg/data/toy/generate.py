"""Writing the toy world to disk in detectron2's semantic-segmentation layout.

Layout under ``<root>/toy/``::

    images/{train,val}/NNNNN.png        RGB scenes
    labels_all/{train,val}/NNNNN.png    uint8 ids over all classes, 255 ignore
    labels_seen/train/NNNNN.png         uint8 ids over the seen classes, unseen pixels 255
    captions/{train,val}.json           {"NNNNN": caption}
    manifest.json                       seed, world digest, image size, counts

Image ``i`` of split ``s`` is rendered from ``numpy.random.default_rng([seed, s, i])`` (``s`` = 0 train, 1 val), so
images are independent of each other and of the number of worker processes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from .render import Scene, render_scene
from .world import ToyWorld, load_world

__all__ = [
    "DEFAULT_COUNTS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "SPLIT_CODES",
    "default_dataset_root",
    "ensure_toy_world",
    "generate_toy_world",
    "render_indexed_scene",
    "toy_world_is_complete",
]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
DEFAULT_IMAGE_SIZE = 160
DEFAULT_COUNTS: Dict[str, int] = {"train": 2000, "val": 200}
SPLIT_CODES: Dict[str, int] = {"train": 0, "val": 1}
_MANIFEST_VERSION = 1
_SUBDIRS = ("images", "labels_all", "labels_seen", "captions")


def default_dataset_root() -> Path:
    """``$DETECTRON2_DATASETS`` or ``datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def render_indexed_scene(world: ToyWorld, seed: int, split: str, index: int, size: int) -> Scene:
    """Scene ``index`` of ``split`` for ``seed``: the same bytes in any process, in any order."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_CODES)}")
    return render_scene(world, np.random.default_rng([seed, SPLIT_CODES[split], index]), size)


def _manifest(world: ToyWorld, seed: int, size: int, counts: Dict[str, int]) -> dict:
    return {
        "version": _MANIFEST_VERSION,
        "seed": int(seed),
        "world_digest": world.digest,
        "image_size": int(size),
        "counts": {k: int(v) for k, v in counts.items()},
        "classes": world.classes,
        "unseen_classes": list(world.unseen),
    }


def toy_world_is_complete(
    root: Path, world: ToyWorld, seed: int, size: int, counts: Dict[str, int]
) -> bool:
    """Whether ``root/toy`` holds a finished world with exactly this seed, split, size and counts."""
    toy = Path(root) / "toy"
    manifest = toy / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text()) != _manifest(world, seed, size, counts):
        return False
    for split, n in counts.items():
        dirs = ["images", "labels_all"] + (["labels_seen"] if split == "train" else [])
        if any(len(list((toy / d / split).glob("*.png"))) != n for d in dirs):
            return False
        if not (toy / "captions" / f"{split}.json").is_file():
            return False
    return True


def _write_one(index: int, *, toy: Path, world: ToyWorld, seed: int, split: str, size: int, lut: np.ndarray) -> Tuple[
    str, str
]:
    scene = render_indexed_scene(world, seed, split, index, size)
    stem = f"{index:05d}"
    png = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    cv2.imwrite(str(toy / "images" / split / f"{stem}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), png)
    cv2.imwrite(str(toy / "labels_all" / split / f"{stem}.png"), scene.label, png)
    if split == "train":
        cv2.imwrite(str(toy / "labels_seen" / split / f"{stem}.png"), lut[scene.label], png)
    return stem, scene.caption


def generate_toy_world(
    root: Optional[Union[str, Path]] = None,
    *,
    world_file: Optional[Union[str, Path]] = None,
    seed: int = DEFAULT_SEED,
    size: int = DEFAULT_IMAGE_SIZE,
    counts: Optional[Dict[str, int]] = None,
    workers: int = 2,
    force: bool = False,
) -> Path:
    """Write the toy world under ``root/toy`` (``root`` defaults to :func:`default_dataset_root`).

    Does nothing when a complete world with the same seed, split, size and counts is already there (unless
    ``force``); otherwise replaces the previous one. Returns the ``root/toy`` path.
    """
    if not 32 <= size <= 512:
        raise ValueError(f"toy image size must be in 32-512 px, got {size}")
    world = load_world(world_file)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = [s for s in counts if s not in SPLIT_CODES]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; known: {', '.join(SPLIT_CODES)}")
    root = Path(root) if root is not None else default_dataset_root()
    toy = root / "toy"
    if not force and toy_world_is_complete(root, world, seed, size, counts):
        logger.info("Toy world already complete at %s (seed %d, split %s)", toy, seed, world.digest)
        return toy
    for sub in _SUBDIRS:
        shutil.rmtree(toy / sub, ignore_errors=True)
    (toy / "manifest.json").unlink(missing_ok=True)
    lut = world.seen_lut()
    (toy / "captions").mkdir(parents=True, exist_ok=True)
    ctx = get_context("spawn") if workers > 1 else None
    pool = ctx.Pool(workers) if ctx is not None else None
    try:
        for split, n in counts.items():
            for sub in ("images", "labels_all") + (("labels_seen",) if split == "train" else ()):
                (toy / sub / split).mkdir(parents=True, exist_ok=True)
            job = partial(_write_one, toy=toy, world=world, seed=seed, split=split, size=size, lut=lut)
            results = pool.imap(job, range(n), chunksize=16) if pool is not None else map(job, range(n))
            captions = dict(tqdm(results, total=n, desc=f"toy world {split}", unit="img"))
            (toy / "captions" / f"{split}.json").write_text(json.dumps(captions, indent=0, sort_keys=True))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    (toy / "manifest.json").write_text(json.dumps(_manifest(world, seed, size, counts), indent=1))
    logger.info("Wrote the toy world to %s: %s images, seed %d, split %s", toy, counts, seed, world.digest)
    return toy


def ensure_toy_world(root: Optional[Union[str, Path]] = None, world_file: Optional[Union[str, Path]] = None) -> Path:
    """Make sure ``root/toy`` holds a complete world of ``world_file``'s split; return its path.

    A complete world generated earlier with any seed, size or counts (e.g. by ``tools/generate_toy_world.py``) is
    kept; otherwise the default world (seed, size and counts of this module) is generated.
    """
    root = Path(root) if root is not None else default_dataset_root()
    world = load_world(world_file)
    manifest = root / "toy" / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("world_digest") == world.digest and toy_world_is_complete(
            root, world, info.get("seed", -1), info.get("image_size", -1), info.get("counts", {})
        ):
            return root / "toy"
    logger.warning("Toy world missing or incomplete at %s; generating it (about a minute)", root / "toy")
    return generate_toy_world(root, world_file=world_file)
