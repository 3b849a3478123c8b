"""CLIP for zegseg: local-only loading, prompt templates, cached text embeddings, region crops, learned prompts."""
from .backbone import ClipResNetBackbone, build_clip_resnet_backbone
from .loader import (
    BUILTIN_CLIP_MODELS,
    ClipWeightsNotFoundError,
    checkpoint_fingerprint,
    default_clip_dir,
    load_clip,
    resolve_clip_path,
)

__all__ = [
    "BUILTIN_CLIP_MODELS",
    "ClipResNetBackbone",
    "ClipWeightsNotFoundError",
    "build_clip_resnet_backbone",
    "checkpoint_fingerprint",
    "default_clip_dir",
    "load_clip",
    "resolve_clip_path",
]
