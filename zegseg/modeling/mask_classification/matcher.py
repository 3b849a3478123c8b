"""Hungarian matching of predicted segments (class logits + mask logits) to ground-truth segments."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["HungarianMatcher", "pairwise_dice_cost", "pairwise_sigmoid_focal_cost"]


def pairwise_sigmoid_focal_cost(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Mean per-pixel sigmoid focal loss of every prediction against every target, by two matrix products.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary masks (float).
        alpha: weight of positive pixels (negatives get ``1 - alpha``); ``alpha < 0`` disables the weighting.
        gamma: focusing exponent.
    Returns:
        (N, M) costs; entry (n, m) equals ``sigmoid_focal_loss(inputs[n], targets[m]).mean()``.
    """
    prob = inputs.sigmoid()
    # BCE-with-logits against all-ones / all-zeros targets: -log(p) = softplus(-x), -log(1 - p) = softplus(x)
    focal_pos = (1 - prob) ** gamma * F.softplus(-inputs)
    focal_neg = prob**gamma * F.softplus(inputs)
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    cost = focal_pos @ targets.T + focal_neg @ (1 - targets).T
    return cost / inputs.shape[1]


def pairwise_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (with +1 smoothing) of every prediction against every target.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary masks (float).
    Returns:
        (N, M) costs ``1 - (2 |p ∩ t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(inputs)``.
    """
    prob = inputs.sigmoid()
    numerator = 2 * (prob @ targets.T)
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments, per image, minimising

    ``cost_class * (-p(c)) + cost_mask * focal + cost_dice * dice``,

    where ``p(c)`` is the softmax probability of the target's class (over the K + 1 logits) and focal / dice are
    :func:`pairwise_sigmoid_focal_cost` / :func:`pairwise_dice_cost` of the query's mask logits against the
    target mask. Target masks are resized (nearest) to the prediction's resolution for matching; predictions
    are not upsampled. Queries left unassigned are "no object". With Q >= G every target gets a query.
    With ``ignore_unlabeled`` the mask costs are computed on labelled pixels only (a target's ``"labeled"`` map).
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        ignore_unlabeled: bool = False,
    ):
        """
        Args:
            cost_class: weight of the class cost (0: class-agnostic matching; logits are then not needed).
            cost_mask: weight of the sigmoid focal cost.
            cost_dice: weight of the dice cost.
            focal_alpha, focal_gamma: parameters of the focal cost.
            ignore_unlabeled: leave pixels outside every target mask (ignored labels, e.g. unseen classes during
                zero-shot training, and padding) out of the mask costs; MaskFormer counts them as background.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are zero")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.ignore_unlabeled = ignore_unlabeled

    @classmethod
    def from_config(cls, cfg: CfgNode):
        crit = cfg.MODEL.CRITERION
        return {
            "cost_class": crit.CLASS_WEIGHT,
            "cost_mask": crit.MASK_WEIGHT,
            "cost_dice": crit.DICE_WEIGHT,
            "focal_alpha": crit.FOCAL_ALPHA,
            "focal_gamma": crit.FOCAL_GAMMA,
            "ignore_unlabeled": crit.IGNORE_UNLABELED,
        }

    @torch.no_grad()
    def cost_matrix(
        self,
        logits: Tensor | None,
        masks: Tensor,
        labels: Tensor,
        target_masks: Tensor,
        labeled: Optional[Tensor] = None,
    ) -> Tensor:
        """Matching cost of one image.

        Args:
            logits: (Q, K + 1) class logits, last column "no object"; may be ``None`` when ``cost_class`` is 0.
            masks: (Q, h, w) mask logits.
            labels: (G,) target class ids in [0, K).
            target_masks: (G, H, W) binary target masks (bool or float), resized (nearest) to (h, w) here.
            labeled: optional (H, W) bool; only its True pixels (resized like the masks) enter the mask costs.
        Returns:
            (Q, G) float32 costs.
        Raises:
            ValueError: a label outside [0, K), or logits missing while ``cost_class`` is non-zero.
        """
        q, g = masks.shape[0], labels.shape[0]
        cost = masks.new_zeros((q, g), dtype=torch.float32)
        if g == 0:
            return cost
        if self.cost_class != 0:
            if logits is None:
                raise ValueError("the class cost needs pred_logits; build the matcher with cost_class=0 without them")
            num_classes = logits.shape[-1] - 1
            if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                raise ValueError(
                    f"target labels must lie in [0, {num_classes}) for logits over {num_classes} classes + no object;"
                    f" got labels in [{int(labels.min())}, {int(labels.max())}]"
                )
            prob = logits.float().softmax(-1)
            cost = cost + self.cost_class * -prob[:, labels.to(prob.device)]
        if self.cost_mask != 0 or self.cost_dice != 0:
            tgt = target_masks.to(device=masks.device, dtype=torch.float32)[:, None]
            tgt = F.interpolate(tgt, size=masks.shape[-2:], mode="nearest")[:, 0]
            src = masks.float().flatten(1)
            tgt = tgt.flatten(1)
            if labeled is not None:
                keep = F.interpolate(labeled.to(device=masks.device, dtype=torch.float32)[None, None],
                                     size=masks.shape[-2:], mode="nearest").flatten() > 0
                if bool(keep.any()):  # a target too small to survive the resize keeps every pixel
                    src, tgt = src[:, keep], tgt[:, keep]
            if self.cost_mask != 0:
                cost = cost + self.cost_mask * pairwise_sigmoid_focal_cost(src, tgt, self.focal_alpha, self.focal_gamma)
            if self.cost_dice != 0:
                cost = cost + self.cost_dice * pairwise_dice_cost(src, tgt)
        return cost

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor | None, pred_masks: Tensor, targets: Sequence[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            pred_logits: (B, Q, K + 1) class logits, last column "no object"; ``None`` for class-agnostic matching.
            pred_masks: (B, Q, h, w) mask logits.
            targets: B dicts with "labels": (G,) long in [0, K) and "masks": (G, H, W) binary; G may be 0.
        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length min(Q, G): query
            ``query_idx[i]`` is assigned target ``target_idx[i]``.
        Raises:
            FloatingPointError: non-finite costs (diverged predictions).
        """
        if len(targets) != pred_masks.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_masks.shape[0]} predictions")
        indices = []
        for b, target in enumerate(targets):
            logits = pred_logits[b] if pred_logits is not None else None
            labeled = target["labeled"] if self.ignore_unlabeled else None
            cost = self.cost_matrix(logits, pred_masks[b], target["labels"], target["masks"], labeled).cpu()
            if cost.shape[1] == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(cost).all():
                raise FloatingPointError(f"non-finite matching cost for image {b} of the batch: predictions diverged")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
