"""CLIP for zegseg: local-only loading, prompt templates, cached text embeddings, region crops, learned prompts."""
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
    "ClipWeightsNotFoundError",
    "checkpoint_fingerprint",
    "default_clip_dir",
    "load_clip",
    "resolve_clip_path",
]
