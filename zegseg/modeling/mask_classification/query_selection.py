"""Fast mode: send to CLIP only the queries whose crops can change the semantic map.

The CLIP image branch costs one image-encoder pass per query (100 crops per image at the reference config),
almost all of the inference time. Most queries of a trained mask-classification model are "no object" or
duplicates of another query's segment. :class:`QuerySelector` finds them before any crop is built:

* **contribution**: a query adds ``p(c | q) · sigmoid(mask_q)`` to the score of class ``c`` at each pixel. Whatever
  CLIP says, the ensembled ``p(c | q)`` is at most ``bound_q`` (the meta-architecture's ``class_prob_bound``: its
  ensemble with the largest probabilities CLIP could give), so no pixel's score of any class changes by more than
  ``bound_q · max_hw sigmoid(mask_q)`` if the query is left out. Queries below ``min_contribution`` are dropped
  (they take no part in the semantic map at all).
* **area**: queries whose binary mask covers less than ``min_mask_area`` of the image are dropped.
* **cap**: at most ``max_queries`` queries (those of largest contribution bound) are kept.
* **near-duplicates**: a kept query whose binary mask has IoU ``>= duplicate_iou`` with a kept query of larger
  bound borrows that query's CLIP view instead of being cropped itself (IoU 1.0: identical masks only, whose
  crops are identical anyway).

The query of largest bound is always kept. With every cut-off at 0 the selector keeps every query, each using
its own crop, and the model's output is exactly that of exact mode. Statistics are taken at the mask-feature
stride over the image region (not the padding), so selection costs a few milliseconds.

Fast mode is an approximation: a dropped query's bound limits how much each score can move, not whether a pixel's
class changes. Its measured cost and savings on the toy world (``bench/bench_fast_mode.py``) are in the README's
"Speed and fast mode" section and ``bench/README.md``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from torch import Tensor

__all__ = ["QuerySelector", "build_query_selector"]


class QuerySelector:
    """Chooses the queries that go to CLIP (see the module docstring). Holds only options."""

    @configurable
    def __init__(
        self,
        *,
        min_contribution: float = 0.0,
        min_mask_area: float = 0.0,
        max_queries: int = 0,
        duplicate_iou: float = 0.0,
        mask_threshold: float = 0.5,
    ):
        """
        Args:
            min_contribution: drop queries whose largest possible score contribution is below this (0: off).
            min_mask_area: drop queries whose binary mask covers less than this fraction of the image (0: off).
            max_queries: keep at most this many queries, by contribution bound (0: no cap).
            duplicate_iou: queries whose masks overlap a better query's with IoU >= this share its CLIP view
                (0: off; 1.0: identical masks only).
            mask_threshold: a query's pixels are those with ``sigmoid(logit) > mask_threshold`` (as for the crops).
        """
        if min_contribution < 0 or not 0 <= min_mask_area <= 1:
            raise ValueError(
                f"fast mode cut-offs must be >= 0 (area <= 1): min_contribution {min_contribution}, "
                f"min_mask_area {min_mask_area}"
            )
        if max_queries < 0:
            raise ValueError(f"max_queries must be >= 0 (0: no cap), got {max_queries}")
        if not 0 <= duplicate_iou <= 1:
            raise ValueError(f"duplicate_iou must lie in [0, 1] (0: off), got {duplicate_iou}")
        self.min_contribution = float(min_contribution)
        self.min_mask_area = float(min_mask_area)
        self.max_queries = int(max_queries)
        self.duplicate_iou = float(duplicate_iou)
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        fast = cfg.MODEL.CLIP.FAST_MODE
        return {
            "min_contribution": fast.MIN_CONTRIBUTION,
            "min_mask_area": fast.MIN_MASK_AREA,
            "max_queries": fast.MAX_QUERIES,
            "duplicate_iou": fast.DUPLICATE_IOU,
            "mask_threshold": cfg.MODEL.CLIP.MASK_THRESHOLD,
        }

    @torch.no_grad()
    def __call__(self, weight_bound: Tensor, masks: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            weight_bound: (Q,) upper bound of each query's ensembled class probability, over all classes.
            masks: (Q, h, w) mask logits over the image region.
        Returns:
            keep: (M,) int64 indices of the kept queries, ascending.
            source: (M,) int64; kept query ``i`` uses the CLIP view of kept query ``source[i]`` (``source[i] == i``
                unless it was merged into a near-duplicate); ``None`` when every kept query uses its own view
                (``duplicate_iou`` 0, so that no crop is looked up twice).
        """
        if weight_bound.shape != masks.shape[:1]:
            raise ValueError(f"weight_bound {tuple(weight_bound.shape)} does not match masks {tuple(masks.shape)}")
        prob = masks.flatten(1).float().sigmoid()  # (Q, P)
        binary = prob > self.mask_threshold
        contribution = weight_bound.float() * prob.amax(dim=1)
        area = binary.float().mean(dim=1)
        chosen = (contribution >= self.min_contribution) & (area >= self.min_mask_area)
        chosen[contribution.argmax()] = True
        if 0 < self.max_queries < int(chosen.sum()):
            ranked = torch.where(chosen, contribution, contribution.new_tensor(-1.0))
            top = ranked.topk(self.max_queries).indices
            chosen = torch.zeros_like(chosen)
            chosen[top] = True
        keep = chosen.nonzero().squeeze(1)
        if self.duplicate_iou <= 0:
            return keep, None
        if len(keep) == 1:
            return keep, torch.zeros_like(keep)
        return keep, self._near_duplicate_sources(binary[keep].float(), contribution[keep])

    def _near_duplicate_sources(self, binary: Tensor, score: Tensor) -> Tensor:
        """(M, P) binary masks, (M,) scores → (M,) index of the best-scoring query each one nearly duplicates."""
        inter = binary @ binary.T
        area = binary.sum(dim=1)
        iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
        similar = iou >= self.duplicate_iou
        similar.fill_diagonal_(True)
        return torch.where(similar, score[None, :], score.new_tensor(-1.0)).argmax(dim=1)


def build_query_selector(cfg: CfgNode) -> QuerySelector | None:
    """The fast-mode selector when MODEL.CLIP.FAST_MODE.ENABLED, else ``None`` (exact mode: every query to CLIP)."""
    return QuerySelector(cfg) if cfg.MODEL.CLIP.FAST_MODE.ENABLED else None
