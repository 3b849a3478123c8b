"""The embedded toy world: a synthetic open-vocabulary segmentation data set generated on demand."""
from .generate import (
    DEFAULT_COUNTS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    default_dataset_root,
    ensure_toy_world,
    generate_toy_world,
    render_indexed_scene,
    toy_world_is_complete,
)
from .render import CLIP_MEAN_RGB, Scene, masked_region_crop, render_scene
from .world import DEFAULT_WORLD_FILE, ToyWorld, load_world

__all__ = [
    "CLIP_MEAN_RGB",
    "DEFAULT_COUNTS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_WORLD_FILE",
    "Scene",
    "ToyWorld",
    "default_dataset_root",
    "ensure_toy_world",
    "generate_toy_world",
    "load_world",
    "masked_region_crop",
    "render_indexed_scene",
    "render_scene",
    "toy_world_is_complete",
]
