"""What the generators are fed: random label maps over all classes (CaGNet's fine-tuning) and per-class samples
of labelled pixels (the MMD's real side). Neither reads unseen-class labels: the random maps take only class
counts, the pixel sampler only the seen-class training labels it is given."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["class_prior", "sample_label_maps", "sample_pixels_per_class"]


def class_prior(num_seen: int, num_unseen: int, unseen_rate: float, device: Optional[torch.device] = None) -> Tensor:
    """CaGNet's sampling prior over the K = S + U classes: weight 1 for a seen class, ``1 + unseen_rate`` for an
    unseen one, normalised.

    Returns:
        (S + U,) probabilities, seen classes first.
    """
    if num_seen + num_unseen == 0:
        raise ValueError("class_prior needs at least one class")
    if unseen_rate < -1.0:
        raise ValueError(f"unseen_rate must be >= -1, got {unseen_rate}")
    weights = torch.ones(num_seen + num_unseen, device=device)
    weights[num_seen:] += unseen_rate
    return weights / weights.sum()


def sample_label_maps(
    batch: int,
    height: int,
    width: int,
    prior: Tensor,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Label maps drawn i.i.d. per pixel from ``prior`` (CaGNet's fine-tuning step: no image, no ground truth).

    Args:
        batch, height, width: the maps' size.
        prior: (K,) class probabilities (e.g. :func:`class_prior`).
        generator: optional RNG.
    Returns:
        (batch, height, width) long class ids in [0, K).
    """
    ids = torch.multinomial(prior, batch * height * width, replacement=True, generator=generator)
    return ids.view(batch, height, width)


def sample_pixels_per_class(
    labels: Tensor, num_classes: int, num_samples: int, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """For every class present in ``labels``, ``num_samples`` of its pixels drawn uniformly with replacement.

    Args:
        labels: (N,) long class ids; values outside [0, num_classes) (the ignore label) are never drawn.
        num_classes: number of classes that may be drawn.
        num_samples: pixels per present class.
        generator: optional RNG.
    Returns:
        ``(classes, indices)``: (C,) the present classes in increasing order and (C, num_samples) indices into
        ``labels`` whose labels equal the class of their row. C is 0 when no pixel is labelled.
    """
    valid = (labels >= 0) & (labels < num_classes)
    classes = torch.unique(labels[valid])
    if classes.numel() == 0:
        return classes, torch.empty(0, num_samples, dtype=torch.long, device=labels.device)
    weights = (labels[None] == classes[:, None]).float()  # (C, N)
    indices = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return classes, indices
