from .loader import (
    BUILTIN_CLIP_MODELS,
    ClipWeightsNotFoundError,
    checkpoint_fingerprint,
    default_clip_dir,
    load_clip,
    resolve_clip_path,
)
