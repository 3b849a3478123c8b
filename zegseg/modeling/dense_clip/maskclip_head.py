"""MaskCLIP's training-free classifier of dense CLIP features (Zhou et al., ECCV 2022), with its two refinements.

Each position's dense feature (:func:`~zegseg.modeling.clip.dense_features.dense_clip_features`) is L2-normalised
and compared with the L2-normalised text embeddings: the **raw cosine** is the logit (no temperature). At inference
the official code optionally refines the (K, h, w) map at the feature grid, in this order:

* **prompt denoising** (threshold ``t_pd``): ``P = softmax(100 · logits)`` over classes; a class whose largest ``P``
  over all positions of the image is below ``t_pd`` (a prompt no position is confident about) gets logit -100
  everywhere.
* **key smoothing** (threshold ``t_ks``): ``P = softmax(100 · logits)``; every position whose largest class
  probability is below ``t_ks`` takes ``W · P``, where ``W = k̂ k̂ᵀ`` (HW x HW) is the affinity of the last stage's
  keys. As in the official code, the keys (HW, C) are L2-normalised along the *positions* (``F.normalize`` of an
  (N, HW, C) tensor with its default ``dim=1``), i.e. each key channel has unit norm over the image, and ``W`` is
  not renormalised; the other positions keep ``P``. The official thresholds are 1.0 (every position that is not
  certain) and 0.5.

Both are off (threshold 0) in the official MaskCLIP configs; the "+KS+PD" numbers use 1.0 and 0.5.
"""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import CfgNode, configurable
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MaskCLIPHead", "cosine_logits", "key_smoothing", "prompt_denoising"]

REFINE_SCALE = 100.0
"""The official code's fixed multiplier of cosines inside both refinements' softmax."""


def cosine_logits(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """(B, D, h, w) dense features, (K, D) text embeddings → (B, K, h, w) cosine similarities."""
    return torch.einsum("bdhw,kd->bkhw", F.normalize(features, dim=1), F.normalize(text_embeddings, dim=-1))


def prompt_denoising(logits: Tensor, threshold: float) -> Tensor:
    """(B, K, h, w) → (B, K, h, w): classes whose peak ``softmax(100 · logits)`` over the image is below
    ``threshold`` get logit -100 (a new tensor)."""
    probs = (logits * REFINE_SCALE).softmax(dim=1)
    dropped = probs.flatten(2).amax(dim=2) < threshold  # (B, K)
    return logits.masked_fill(dropped[:, :, None, None], -100.0)


def key_smoothing(logits: Tensor, keys: Tensor, threshold: float) -> Tensor:
    """(B, K, h, w) logits, (B, C, h, w) keys → (B, K, h, w) class probabilities, smoothed by key affinity where
    the largest is below ``threshold`` (module docstring)."""
    b, k, h, w = logits.shape
    probs = (logits * REFINE_SCALE).softmax(dim=1).flatten(2).transpose(1, 2)  # (B, HW, K)
    keys = F.normalize(keys.flatten(2).float(), dim=2).transpose(1, 2)  # (B, HW, C): unit norm over positions
    smoothed = (keys @ keys.transpose(1, 2)) @ probs  # (B, HW, K)
    uncertain = probs.amax(dim=2, keepdim=True) < threshold
    return torch.where(uncertain, smoothed, probs).transpose(1, 2).reshape(b, k, h, w)


class MaskCLIPHead(nn.Module):
    """Dense features and text embeddings → per-position class scores, with the optional refinements (holds
    options only: no parameters)."""

    @configurable
    def __init__(self, *, key_smoothing_threshold: float = 0.0, prompt_denoising_threshold: float = 0.0):
        """
        Args:
            key_smoothing_threshold: ``t_ks`` (module docstring); 0: off (the official MaskCLIP configs), 1.0: the
                "+KS" configs.
            prompt_denoising_threshold: ``t_pd``; 0: off, 0.5: the "+PD" configs.
        """
        super().__init__()
        thresholds = {"key smoothing": key_smoothing_threshold, "prompt denoising": prompt_denoising_threshold}
        for name, value in thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MaskCLIP {name} threshold must be in [0, 1] (0: off), got {value}")
        self.key_smoothing_threshold = key_smoothing_threshold
        self.prompt_denoising_threshold = prompt_denoising_threshold

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, float]:
        return {
            "key_smoothing_threshold": cfg.MODEL.MASKCLIP.KEY_SMOOTHING_THRESH,
            "prompt_denoising_threshold": cfg.MODEL.MASKCLIP.PROMPT_DENOISING_THRESH,
        }

    def forward(self, features: Tensor, keys: Tensor, text_embeddings: Tensor) -> Tensor:
        """
        Args:
            features: (B, D, h, w) dense CLIP features (any norm).
            keys: (B, C, h, w) the last stage's keys (used by key smoothing only).
            text_embeddings: (K, D) class embeddings.
        Returns:
            (B, K, h, w) scores, argmax-comparable per position: cosines, -100 for denoised classes; class
            probabilities (smoothed where uncertain) when key smoothing is on.
        """
        logits = cosine_logits(features.float(), text_embeddings.float())
        if self.prompt_denoising_threshold > 0:
            logits = prompt_denoising(logits, self.prompt_denoising_threshold)
        if self.key_smoothing_threshold > 0:
            logits = key_smoothing(logits, keys, self.key_smoothing_threshold)
        return logits
