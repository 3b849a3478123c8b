"""Masked region crops of toy scenes (the inputs CLIP's image branch classifies) and zero-shot evaluation on them.

A region crop of class ``c`` is the scene cropped to the box of ``label == c``, with pixels outside that mask
filled with CLIP's mean colour, resized to CLIP's input resolution; the same recipe the segmentation models
use on predicted masks.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

from .render import Scene, masked_region_crop, render_scene
from .world import ToyWorld

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "EVAL_TEMPLATE",
    "class_names_in",
    "eval_region_crops",
    "normalize_crops",
    "scene_region_crops",
    "zero_shot_report",
]

CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
EVAL_TEMPLATE = "a photo of a {}."
_EVAL_STREAM = 2  # seed stream of evaluation scenes (0 and 1 are the train and val images written to disk)


def scene_region_crops(
    scene: Scene, num_classes: int, out_size: int, rng: np.random.Generator = None
) -> Tuple[np.ndarray, np.ndarray]:
    """One masked crop per class present in ``scene``.

    With ``rng``, masks are perturbed as a predicted mask might be: they may take in the adjacent ignore
    (boundary) pixels, be eroded or dilated by 1-3 px, and the box may grow by up to 15%.

    Returns:
        crops: (N, out_size, out_size, 3) uint8 RGB; classes: (N,) int64 class ids.
    """
    present = np.flatnonzero(np.bincount(scene.label.ravel(), minlength=256)[:num_classes])
    crops, classes = [], []
    kernel = np.ones((3, 3), np.uint8)
    for c in present:
        mask = scene.label == c
        expand = 1.0
        if rng is not None:
            if rng.random() < 0.7:
                grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
                mask |= grown & (scene.label == 255)
            op = int(rng.integers(3))
            if op and rng.random() < 0.5:
                morph = cv2.erode if op == 1 else cv2.dilate
                changed = morph(mask.astype(np.uint8), kernel, iterations=int(rng.integers(1, 4))).astype(bool)
                if changed.sum() >= 16:
                    mask = changed
            expand = float(rng.uniform(1.0, 1.15))
        crops.append(masked_region_crop(scene.image, mask, out_size, expand))
        classes.append(int(c))
    return np.stack(crops), np.asarray(classes, dtype=np.int64)


def eval_region_crops(
    world: ToyWorld, per_class: int, out_size: int, seed: int = 0, size: int = 160, max_scenes: int = 20000
) -> Tuple[np.ndarray, np.ndarray]:
    """A deterministic evaluation set: ``per_class`` ground-truth-mask crops of every class, from scenes of their
    own seed stream (never written to disk, never used for training).

    Returns:
        crops: (K * per_class, out_size, out_size, 3) uint8; classes: (K * per_class,) int64, sorted by class.
    """
    k = len(world.classes)
    buckets: List[List[np.ndarray]] = [[] for _ in range(k)]
    for index in range(max_scenes):
        scene = render_scene(world, np.random.default_rng([seed, _EVAL_STREAM, index]), size)
        crops, classes = scene_region_crops(scene, k, out_size)
        for crop, c in zip(crops, classes):
            if len(buckets[c]) < per_class:
                buckets[c].append(crop)
        if all(len(b) == per_class for b in buckets):
            break
    else:
        raise RuntimeError(f"{max_scenes} scenes did not give {per_class} crops of every class")
    crops = np.stack([crop for bucket in buckets for crop in bucket])
    return crops, np.repeat(np.arange(k), per_class)


def normalize_crops(crops: np.ndarray, device: torch.device = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, R, R, 3) uint8 RGB -> (N, 3, R, R) CLIP-normalised tensor."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
    mean = torch.tensor(CLIP_PIXEL_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def zero_shot_report(
    model, world: ToyWorld, crops: np.ndarray, classes: np.ndarray, template: str = EVAL_TEMPLATE, chunk: int = 256
) -> Dict[str, float]:
    """Zero-shot top-1 accuracy of a CLIP model on region crops, over all classes of ``world``.

    Args:
        model: a ``clip.model.CLIP``.
        crops: (N, R, R, 3) uint8 with R = ``model.visual.input_resolution``; classes: (N,) ids.
    Returns:
        accuracies (0-1) keyed ``overall``, ``stuff``, ``thing``, ``thing_color`` (colour word right),
        ``thing_shape`` (shape word right), ``seen``, ``unseen``.
    """
    import clip

    device = next(model.parameters()).device
    dtype = model.dtype
    tokens = clip.tokenize([template.format(c) for c in world.classes], context_length=model.context_length)
    text = model.encode_text(tokens.to(device)).float()
    text = text / text.norm(dim=-1, keepdim=True)
    preds = []
    for start in range(0, len(crops), chunk):
        image = model.encode_image(normalize_crops(crops[start : start + chunk], device, dtype)).float()
        image = image / image.norm(dim=-1, keepdim=True)
        preds.append((image @ text.T).argmax(dim=1).cpu())
    pred = torch.cat(preds).numpy()
    gt = np.asarray(classes)
    groups = world.class_groups()
    ns, n_shapes = world.num_stuff, len(world.shapes)
    is_thing = gt >= ns
    pred_thing = pred >= ns
    color_ok = pred_thing & ((pred - ns) // n_shapes == (gt - ns) // n_shapes)
    shape_ok = pred_thing & ((pred - ns) % n_shapes == (gt - ns) % n_shapes)
    correct = pred == gt

    def acc(sel: np.ndarray, hits: np.ndarray = correct) -> float:
        return float(hits[sel].mean()) if sel.any() else float("nan")

    return {
        "overall": acc(np.ones_like(correct)),
        "stuff": acc(~is_thing),
        "thing": acc(is_thing),
        "thing_color": acc(is_thing, color_ok),
        "thing_shape": acc(is_thing, shape_ok),
        "seen": acc(np.isin(gt, groups["seen"])),
        "unseen": acc(np.isin(gt, groups["unseen"])),
    }


def class_names_in(text: str, names: Sequence[str]) -> List[str]:
    """The class names that occur in ``text`` (word-bounded)."""
    padded = f" {text.replace(',', ' ').replace('.', ' ')} "
    return [n for n in names if f" {n} " in padded]
