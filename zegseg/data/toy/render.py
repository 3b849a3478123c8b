"""Procedural rendering of toy-world scenes: textured stuff regions, coloured shapes, labels and captions.

Everything is a pure function of a ``numpy.random.Generator``, so a scene is reproducible from its seed.
Images are ``(H, W, 3) uint8 RGB``; labels ``(H, W) uint8`` ids over :attr:`ToyWorld.classes`, 255 on
anti-aliased thing boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .world import ToyWorld

__all__ = [
    "CLIP_MEAN_RGB",
    "SHAPE_OUTLINES",
    "STUFF_TEXTURES",
    "Scene",
    "make_caption",
    "masked_region_crop",
    "render_scene",
]

# CLIP's normalisation mean as 0-255 RGB: the fill colour outside a region's mask in masked crops.
CLIP_MEAN_RGB = (122.77, 116.75, 104.09)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 low-frequency noise, roughly unit variance."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_normal((size, size)).astype(np.float32)


def _rgb(color: Sequence[float]) -> np.ndarray:
    return np.asarray(color, dtype=np.float32)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    g = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img = _rgb((105, 160, 232)) * (1 - g) + _rgb((180, 212, 248)) * g
    clouds = np.clip(_smooth_noise(rng, size, int(rng.integers(4, 7))) - 0.5, 0, 1)[..., None]
    return img * (1 - 0.8 * clouds) + 250.0 * 0.8 * clouds


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    streaks = cv2.blur(_fine_noise(rng, size), (1, int(rng.integers(5, 9))))
    shade = 0.12 * _smooth_noise(rng, size, 6) + 0.55 * streaks
    return _rgb((60, 140, 46)) * (1 + shade[..., None])


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    period = float(rng.uniform(7, 11))
    phase = 2 * np.pi * (y / period + 0.04 * np.sin(x / float(rng.uniform(6, 12)))) + 1.5 * _smooth_noise(rng, size, 5)
    wave = np.clip(np.sin(phase), 0, 1) ** 4
    return _rgb((36, 88, 164)) * (1 - wave[..., None]) + _rgb((130, 180, 236)) * wave[..., None]


def _sand(rng: np.random.Generator, size: int) -> np.ndarray:
    shade = 0.05 * _smooth_noise(rng, size, 8) + 0.06 * _fine_noise(rng, size)
    return _rgb((222, 196, 142)) * (1 + shade[..., None])


def _brick_wall(rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = int(rng.integers(9, 13)), int(rng.integers(20, 27))
    y = np.arange(size)[:, None] + int(rng.integers(0, h))
    x = np.arange(size)[None, :] + int(rng.integers(0, w))
    row = y // h
    shifted = x + (row % 2) * (w // 2)
    col = shifted // w
    tones = rng.uniform(0.82, 1.12, size=(size // h + 3, size // w + 3)).astype(np.float32)
    brick = _rgb((168, 70, 50)) * tones[row, col][..., None]
    brick = brick * (1 + 0.05 * _fine_noise(rng, size)[..., None])
    mortar = ((y % h) < 2) | ((shifted % w) < 2)
    return np.where(mortar[..., None], _rgb((196, 190, 178)), brick)


def _snow(rng: np.random.Generator, size: int) -> np.ndarray:
    shade = _smooth_noise(rng, size, 5)[..., None]
    sparkle = 0.02 * _fine_noise(rng, size)[..., None]
    return _rgb((242, 246, 252)) * (1 + sparkle) - _rgb((14, 10, 2)) * np.clip(shade, 0, None)


def _road(rng: np.random.Generator, size: int) -> np.ndarray:
    shade = 0.06 * _smooth_noise(rng, size, 7) + 0.16 * _fine_noise(rng, size)
    return _rgb((74, 74, 78)) * (1 + shade[..., None])


def _wooden_floor(rng: np.random.Generator, size: int) -> np.ndarray:
    h = int(rng.integers(13, 19))
    y = np.arange(size)[:, None] + int(rng.integers(0, h))
    x = np.arange(size, dtype=np.float32)[None, :]
    plank = y // h
    tones = rng.uniform(0.85, 1.12, size=size // h + 3).astype(np.float32)
    grain = np.sin(x / float(rng.uniform(2.5, 4.0)) + 3.0 * _smooth_noise(rng, size, 4) + plank * 1.7)
    wood = _rgb((158, 104, 58)) * (tones[plank] * (1 + 0.07 * grain))[..., None]
    gap = np.broadcast_to((y % h) < 1, wood.shape[:2])
    return np.where(gap[..., None], _rgb((78, 48, 24)), wood)


def _dirt(rng: np.random.Generator, size: int) -> np.ndarray:
    shade = 0.14 * _smooth_noise(rng, size, 9) + 0.1 * _fine_noise(rng, size)
    specks = (rng.random((size, size)) < 0.04)[..., None]
    dirt = _rgb((112, 80, 52)) * (1 + shade[..., None])
    return np.where(specks, dirt * 0.6, dirt)


def _tiled_floor(rng: np.random.Generator, size: int) -> np.ndarray:
    t = int(rng.integers(15, 22))
    y = np.arange(size)[:, None] + int(rng.integers(0, t))
    x = np.arange(size)[None, :] + int(rng.integers(0, t))
    tones = rng.uniform(0.93, 1.03, size=(size // t + 3, size // t + 3)).astype(np.float32)
    tile = _rgb((224, 224, 216)) * tones[y // t, x // t][..., None]
    grout = ((y % t) < 2) | ((x % t) < 2)
    return np.where(grout[..., None], _rgb((136, 136, 132)), tile)


STUFF_TEXTURES: Dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sky": _sky,
    "grass": _grass,
    "water": _water,
    "sand": _sand,
    "brick wall": _brick_wall,
    "snow": _snow,
    "road": _road,
    "wooden floor": _wooden_floor,
    "dirt": _dirt,
    "tiled floor": _tiled_floor,
}


def _regular(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _star() -> np.ndarray:
    a = -np.pi / 2 + np.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.2, 0.5)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross() -> np.ndarray:
    a, b = 1.05, 0.36
    return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b],
                     [-b, -b]])


# Unit outlines (V, 2), scaled so that the shapes have similar areas at the same radius.
SHAPE_OUTLINES: Dict[str, np.ndarray] = {
    "circle": _regular(48, 0.95),
    "square": _regular(4, 1.2, np.pi / 4),
    "triangle": _regular(3, 1.3, -np.pi / 2),
    "star": _star(),
    "cross": _cross(),
}


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 class ids over all classes; 255 on anti-aliased thing boundaries.
        caption: one sentence naming exactly the classes present in ``label``.
    """

    image: np.ndarray
    label: np.ndarray
    caption: str


def _layout_stuff(rng: np.random.Generator, num_stuff: int, size: int) -> Tuple[np.ndarray, List[int]]:
    """(H, W) stuff ids over irregular regions, each covering >= 8% of the image; and the ids used."""
    k = int(rng.integers(1, 4))
    ids = [int(i) for i in rng.choice(num_stuff, size=k, replace=False)]
    fields = np.stack([_smooth_noise(rng, size, int(rng.integers(2, 5))) for _ in ids])
    fields += 0.6 * rng.standard_normal((k, 1, 1)).astype(np.float32)
    keep = np.ones(k, dtype=bool)
    while True:
        region = np.argmax(np.where(keep[:, None, None], fields, -np.inf), axis=0)
        area = np.bincount(region.ravel(), minlength=k) / region.size
        small = keep & (area < 0.08)
        if not small.any():
            break
        keep[np.argmin(np.where(small, area, np.inf))] = False
    return np.asarray(ids)[region], [ids[i] for i in np.flatnonzero(keep)]


def _shape_coverage(rng: np.random.Generator, shape: str, size: int, radius: float) -> np.ndarray:
    """(H, W) uint8 anti-aliased coverage (0-255) of a randomly placed, rotated shape."""
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    margin = 0.55 * radius
    center = rng.uniform(margin, size - margin, size=2)
    pts = SHAPE_OUTLINES[shape] @ rot.T * radius * rng.uniform(0.9, 1.1, size=2) + center
    coverage = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(coverage, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return coverage


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_THING_TEMPLATES = ("{things} on {stuff}", "a photo of {things} on {stuff}", "{things} in front of {stuff}")
_STUFF_TEMPLATES = ("{stuff}", "a photo of {stuff}")


def make_caption(rng: np.random.Generator, things: Sequence[str], stuff: Sequence[str]) -> str:
    """A caption naming ``things`` (each with "a") and ``stuff``, e.g. "a red circle and a blue star on grass"."""
    stuff_text = _join(list(stuff))
    if not things:
        return _STUFF_TEMPLATES[int(rng.integers(len(_STUFF_TEMPLATES)))].format(stuff=stuff_text)
    things_text = _join([f"a {t}" for t in things])
    return _THING_TEMPLATES[int(rng.integers(len(_THING_TEMPLATES)))].format(things=things_text, stuff=stuff_text)


def render_scene(world: ToyWorld, rng: np.random.Generator, size: int = 160) -> Scene:
    """Render one scene: 1-3 stuff regions, then 1-3 shapes (radius 14-32 px at 160 px, scaled with ``size``)
    drawn back to front with at most ~35% of each shape occluded by earlier ones."""
    stuff_map, stuff_ids = _layout_stuff(rng, world.num_stuff, size)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for i in stuff_ids:
        region = stuff_map == i
        image[region] = STUFF_TEXTURES[world.stuff[i]](rng, size)[region]
    label = stuff_map.astype(np.uint8)

    occupied = np.zeros((size, size), dtype=bool)
    scale = size / 160.0
    for _ in range(int(rng.integers(1, 4))):
        color, shape = world.things[int(rng.integers(len(world.things)))]
        radius = rng.uniform(14, 32) * scale
        for _attempt in range(8):
            coverage = _shape_coverage(rng, shape, size, radius)
            inside = coverage > 0
            if (occupied & inside).sum() <= 0.35 * inside.sum():
                break
        else:
            continue
        rgb = _rgb(world.colors[color]) + rng.integers(-14, 15, size=3)
        direction = rng.standard_normal(2)
        ramp = (np.arange(size)[:, None] * direction[0] + np.arange(size)[None, :] * direction[1]) / size
        shade = 1 + 0.08 * (ramp - ramp.mean()).astype(np.float32) / (np.abs(direction).sum() + 1e-6)
        alpha = (coverage.astype(np.float32) / 255.0)[..., None]
        image = image * (1 - alpha) + (rgb * shade[..., None]) * alpha
        label[coverage == 255] = world.thing_id(color, shape)
        label[(coverage > 0) & (coverage < 255)] = 255
        occupied |= inside

    image += 3.0 * rng.standard_normal(image.shape[:2]).astype(np.float32)[..., None]
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    present = np.bincount(label.ravel(), minlength=256)[: len(world.classes)]
    names = world.classes
    stuff_present = sorted((i for i in range(world.num_stuff) if present[i]), key=lambda i: -present[i])
    things_present = [names[i] for i in range(world.num_stuff, len(names)) if present[i]]
    rng.shuffle(things_present)
    caption = make_caption(rng, things_present, [names[i] for i in stuff_present])
    return Scene(image=image, label=label, caption=caption)


def masked_region_crop(image: np.ndarray, mask: np.ndarray, out_size: int, expand: float = 1.0) -> np.ndarray:
    """Crop ``image`` to the box of ``mask`` (scaled by ``expand``), fill outside the mask with CLIP's mean colour,
    and resize to ``out_size`` square (bicubic).

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool, not empty.
    Returns:
        (out_size, out_size, 3) uint8 RGB.
    """
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    hh, hw = expand * (ys.max() + 1 - ys.min()) / 2, expand * (xs.max() + 1 - xs.min()) / 2
    y0, y1 = max(int(round(cy - hh)), 0), min(int(round(cy + hh)), mask.shape[0])
    x0, x1 = max(int(round(cx - hw)), 0), min(int(round(cx + hw)), mask.shape[1])
    filled = np.where(mask[..., None], image, np.asarray(CLIP_MEAN_RGB, dtype=np.float32))
    crop = filled[y0:y1, x0:x1].astype(np.float32)
    out = cv2.resize(crop, (out_size, out_size), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
