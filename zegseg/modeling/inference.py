"""Inference-time arithmetic shared by the meta-architectures: semantic assembly, segment/CLIP ensembles and
seen-class calibration. Pure, vectorised functions; leading batch dimensions ``...`` are allowed throughout.

Ensemble rule (ZegFormer and the two-stage "simple baseline" use the same one). With p the segment classifier's
probabilities, p' CLIP's, and λ the ensemble weight::

    seen class c:    p_c^λ     · p'_c^(1-λ)
    unseen class c:  p_c^(1-λ) · p'_c^λ

ZegFormer: λ = ``MODEL.ZEGFORMER.ENSEMBLE_LAMBDA`` (2/3). The two-stage model's w is the same λ
(``MODEL.TWO_STAGE.ENSEMBLE_WEIGHT``: seen ``p_mf^w p_clip^(1-w)``, unseen ``p_mf^(1-w) p_clip^w``); for a
cross-dataset vocabulary every class is unseen (``unseen`` all True, or ``mode="all"``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "ENSEMBLE_MODES", "calibrate", "check_ensemble_mode", "ensemble_logits", "ensemble_probs", "semantic_inference"
]

ENSEMBLE_MODES = ("seen_unseen", "all")


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor, *, cls_probs: bool = False) -> Tensor:
    """MaskFormer's semantic assembly: ``scores[c, h, w] = sum_q p(c | q) · sigmoid(mask_q[h, w])``.

    Args:
        mask_cls: (..., Q, K + 1) class logits whose last column is "no object" (softmaxed here, then dropped), or,
            with ``cls_probs=True``, (..., Q, K) class probabilities used as they are (e.g. an ensemble's output).
        mask_pred: (..., Q, H, W) mask logits.
    Returns:
        (..., K, H, W) per-class scores.
    """
    probs = mask_cls if cls_probs else F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("...qc,...qhw->...chw", probs, mask_pred.sigmoid())


def check_ensemble_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`ENSEMBLE_MODES`, else raise a ValueError naming the known ones."""
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; known: {', '.join(ENSEMBLE_MODES)}")
    return mode


def ensemble_probs(
    p_seg: Tensor,
    p_clip: Tensor,
    unseen: Tensor,
    lam: float,
    *,
    mode: str = "seen_unseen",
    mean_seen_clip: bool = False,
    clip_valid: Optional[Tensor] = None,
) -> Tensor:
    """Geometric ensemble of segment-classifier and CLIP probabilities (rule in the module docstring).

    Args:
        p_seg: (..., Q, K) segment-classifier probabilities ("no object" already dropped).
        p_clip: (..., Q, K) CLIP probabilities of the same queries.
        unseen: (K,) bool, True for unseen classes.
        lam: λ in [0, 1].
        mode: "seen_unseen" (the rule above) or "all" (every class treated as unseen: ``p^(1-λ) p'^λ``).
        mean_seen_clip: replace CLIP's probabilities of the seen classes by their mean per query, so that CLIP
            does not reorder seen classes (ZegFormer's reference code).
        clip_valid: (..., Q) bool; queries with False (e.g. empty masks) get CLIP probability 1 for every class,
            so that CLIP does not vote on them.
    Returns:
        (..., Q, K) ensembled scores (not renormalised).
    """
    check_ensemble_mode(mode)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"ensemble weight must lie in [0, 1], got {lam}")
    if p_seg.shape != p_clip.shape or unseen.shape != p_seg.shape[-1:]:
        raise ValueError(
            f"shape mismatch: p_seg {tuple(p_seg.shape)}, p_clip {tuple(p_clip.shape)}, unseen {tuple(unseen.shape)}"
        )
    unseen = unseen.to(device=p_seg.device, dtype=torch.bool)
    if mode == "all":
        unseen = torch.ones_like(unseen)
    seen = ~unseen
    if mean_seen_clip and bool(seen.any()):
        seen_mean = (p_clip * seen).sum(dim=-1, keepdim=True) / seen.sum()
        p_clip = torch.where(seen, seen_mean, p_clip)
    if clip_valid is not None:
        p_clip = torch.where(clip_valid.to(p_clip.device)[..., None], p_clip, torch.ones_like(p_clip))
    seg_exp = torch.where(unseen, 1.0 - lam, lam).to(p_seg.dtype)
    return p_seg.pow(seg_exp) * p_clip.pow(1.0 - seg_exp)


def ensemble_logits(
    seg_logits: Tensor,
    clip_logits: Tensor,
    unseen: Tensor,
    lam: float,
    *,
    mode: str = "seen_unseen",
    mean_seen_clip: bool = False,
    clip_valid: Optional[Tensor] = None,
    clip_no_object: bool = False,
) -> Tensor:
    """:func:`ensemble_probs` from logits.

    Args:
        seg_logits: (..., Q, K + 1) segment logits, last column "no object" (softmax over K + 1, then dropped).
        clip_logits: (..., Q, K) CLIP logits (e.g. ``100 · cos``; softmax over K).
        unseen, lam, mode, mean_seen_clip, clip_valid: as in :func:`ensemble_probs`.
        clip_no_object: append the segment's "no object" logit to CLIP's logits before their softmax and drop it
            after (ZegFormer's reference code), instead of a softmax over the K classes only.
    Returns:
        (..., Q, K) ensembled scores, ready for ``semantic_inference(..., cls_probs=True)``.
    """
    p_seg = F.softmax(seg_logits.float(), dim=-1)[..., :-1]
    clip_logits = clip_logits.float()
    if clip_no_object:
        p_clip = F.softmax(torch.cat([clip_logits, seg_logits[..., -1:].float()], dim=-1), dim=-1)[..., :-1]
    else:
        p_clip = F.softmax(clip_logits, dim=-1)
    return ensemble_probs(p_seg, p_clip, unseen, lam, mode=mode, mean_seen_clip=mean_seen_clip, clip_valid=clip_valid)


def calibrate(scores: Tensor, seen: Tensor, gamma: float, *, dim: int = 0, inplace: bool = False) -> Tensor:
    """Subtract γ from the scores of seen classes (generalised zero-shot calibration).

    Args:
        scores: any tensor with a class dimension of size K at ``dim``, e.g. (K, H, W) semantic scores
            (``dim=0``, ZegFormer's use) or (Q, K) class probabilities (``dim=-1``).
        seen: (K,) bool, True for seen classes.
        gamma: γ; 0 returns ``scores`` unchanged.
        inplace: subtract in ``scores`` itself (no second (K, H, W) buffer) and return it.
    Returns:
        a tensor shaped like ``scores`` (``scores`` itself when γ is 0 or ``inplace``).
    """
    if gamma == 0:
        return scores
    if seen.shape != (scores.shape[dim],):
        raise ValueError(f"seen has shape {tuple(seen.shape)}, expected ({scores.shape[dim]},) for dim {dim}")
    shape = [1] * scores.ndim
    shape[dim] = -1
    shift = gamma * seen.to(device=scores.device, dtype=scores.dtype).view(shape)
    return scores.sub_(shift) if inplace else scores - shift
