"""Loading OpenAI-format CLIP models from local files only (never the network).

A model is named either by an OpenAI release name (``"ViT-B/16"``, looked up as ``ViT-B-16.pt`` in the weights
directory), by a name built into zegseg (``"ToyCLIP"``: the tiny CLIP trained on the embedded toy world, shipped
with the package), or by a path to a TorchScript archive or a state-dict checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from functools import cache
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from clip import clip as _openai_clip
from clip.model import CLIP, build_model

from ...utils.known_warnings import known_warnings_silenced

__all__ = [
    "BUILTIN_CLIP_MODELS",
    "ClipWeightsNotFoundError",
    "checkpoint_fingerprint",
    "default_clip_dir",
    "load_clip",
    "resolve_clip_path",
]

logger = logging.getLogger(__name__)

_MODEL_ZOO = Path(__file__).resolve().parents[2] / "model_zoo"
BUILTIN_CLIP_MODELS: Dict[str, Path] = {"ToyCLIP": _MODEL_ZOO / "toy_clip.pt"}


class ClipWeightsNotFoundError(FileNotFoundError):
    """Raised when CLIP weights are not on disk; the message says which file to put where."""


def default_clip_dir() -> Path:
    """Directory searched for named OpenAI checkpoints: ``$ZEGSEG_CLIP_DIR`` or ``~/.cache/clip``."""
    return Path(os.environ.get("ZEGSEG_CLIP_DIR", Path.home() / ".cache" / "clip")).expanduser()


def resolve_clip_path(name_or_path: str, weights_dir: Optional[Union[str, Path]] = None) -> Path:
    """Map a CLIP name or path to an existing checkpoint file.

    Raises:
        ClipWeightsNotFoundError: naming the expected file, where to put it, and the known names.
    """
    if name_or_path in BUILTIN_CLIP_MODELS:
        path = BUILTIN_CLIP_MODELS[name_or_path]
        if not path.is_file():
            raise ClipWeightsNotFoundError(
                f"the built-in {name_or_path!r} checkpoint is missing at {path}; "
                "rebuild it with `python tools/train_toy_clip.py` or restore it from git"
            )
        return path
    if name_or_path in _openai_clip._MODELS:
        folder = Path(weights_dir).expanduser() if weights_dir else default_clip_dir()
        filename = os.path.basename(_openai_clip._MODELS[name_or_path])
        path = folder / filename
        if not path.is_file():
            raise ClipWeightsNotFoundError(
                f"CLIP weights for {name_or_path!r} not found: expected the file {path}. zegseg never downloads; "
                f"copy OpenAI's {filename} there, set MODEL.CLIP.WEIGHTS_DIR (or $ZEGSEG_CLIP_DIR) to the folder "
                "that holds it, or set MODEL.CLIP.NAME to the checkpoint's path"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = ", ".join(sorted(BUILTIN_CLIP_MODELS) + sorted(_openai_clip._MODELS))
    raise ClipWeightsNotFoundError(
        f"CLIP model {name_or_path!r} is neither a known name ({known}) nor an existing file"
    )


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (it holds compiled code), as OpenAI's CLIP releases are."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """State dict of a TorchScript archive (OpenAI's releases) or of a plain/wrapped state-dict checkpoint."""
    if _is_torchscript(path):
        with known_warnings_silenced():  # torch.jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu").eval().state_dict()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or "text_projection" not in obj:
        raise ValueError(f"{path} is not an OpenAI-format CLIP checkpoint (no 'text_projection' weight)")
    return dict(obj)


@cache
def checkpoint_fingerprint(path: Union[str, Path]) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint file; keys on-disk caches of its text embeddings."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_clip(
    name_or_path: str,
    device: Union[str, torch.device] = "cpu",
    weights_dir: Optional[Union[str, Path]] = None,
    half_on_gpu: bool = True,
) -> CLIP:
    """Load a frozen CLIP model in eval mode.

    The model is fp32 on CPU; on CUDA it is fp16 (as OpenAI's releases, and as the official ZegFormer runs it)
    unless ``half_on_gpu`` is False (fp32, as the official simple baseline runs it). ``model.visual.input_resolution``
    gives the crop size the image encoder expects; ``model.checkpoint_path`` records the file it came from.
    """
    path = resolve_clip_path(name_or_path, weights_dir)
    model = build_model(_read_state_dict(path))
    device = torch.device(device)
    model = model.to(device)
    if device.type == "cpu" or not half_on_gpu:
        model = model.float()
    model.requires_grad_(False)
    model.checkpoint_path = str(path)
    logger.info("Loaded CLIP %s from %s (input %dpx)", name_or_path, path, model.visual.input_resolution)
    return model.eval()
