"""The semantic embeddings the generators are conditioned on: CLIP text embeddings of the prompt-templated class
names (the default), or per-class vectors from a file (e.g. word2vec / fastText, as in the papers)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["load_class_embeddings", "read_embedding_file"]


def read_embedding_file(path: str) -> Tensor | Dict[str, Tensor]:
    """Per-class vectors stored in ``path``: a ``.npy`` array (K, E), or a ``.pt`` / ``.pth`` file holding a
    (K, E) tensor or a ``{class name: (E,) vector}`` dict (read with ``weights_only=True``: no code runs).

    Raises:
        ValueError: missing or unreadable file, unknown suffix, or contents of the wrong kind.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"class-embedding file not found: {path}")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".pt", ".pth"):
        raise ValueError(f"class-embedding file {path} must be .npy, .pt or .pth")
    try:
        if suffix == ".npy":
            data = torch.from_numpy(np.load(file, allow_pickle=False))
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read the class-embedding file {path}: {reason}") from None
    if isinstance(data, dict):
        if not all(isinstance(k, str) and torch.is_tensor(v) and v.dim() == 1 for k, v in data.items()):
            raise ValueError(f"class-embedding file {path}: a dict must map class names to 1-D vectors")
        return {k: v.float() for k, v in data.items()}
    if not torch.is_tensor(data) or data.dim() != 2:
        raise ValueError(f"class-embedding file {path} must hold a 2-D (classes, dim) array or a name → vector dict")
    return data.float()


def load_class_embeddings(
    source: str, class_names: Sequence[str], text_embedder: Optional[Callable[[Sequence[str]], Tensor]]
) -> Tensor:
    """(K, E) L2-normalised embeddings of ``class_names``.

    Args:
        source: "clip" (``text_embedder`` on the names, i.e. the configured CLIP and prompt templates) or a file
            path (see :func:`read_embedding_file`; a (K, E) array must list the classes in ``class_names``'
            order: the training classes, then the unseen ones).
        class_names: the K classes, in the order of the model's classifier.
        text_embedder: names → (K, E) CLIP text embeddings (needed for "clip" only).
    Raises:
        ValueError: a file whose rows or names do not match ``class_names``, or "clip" without an embedder.
    """
    if source == "clip":
        if text_embedder is None:
            raise ValueError('class embeddings "clip" need a text embedder')
        return F.normalize(text_embedder(list(class_names)).float(), dim=-1)
    data = read_embedding_file(source)
    if isinstance(data, dict):
        missing = [n for n in class_names if n not in data]
        if missing:
            raise ValueError(f"class-embedding file {source} has no vector for {', '.join(missing)}")
        dims = {data[n].numel() for n in class_names}
        if len(dims) != 1:
            raise ValueError(f"class-embedding file {source}: vectors of different lengths {sorted(dims)}")
        data = torch.stack([data[n] for n in class_names])
    elif data.shape[0] != len(class_names):
        raise ValueError(
            f"class-embedding file {source} has {data.shape[0]} rows for {len(class_names)} classes "
            "(the training classes, then the unseen ones)"
        )
    return F.normalize(data, dim=-1)
