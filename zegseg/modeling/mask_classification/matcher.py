"""Hungarian matching of predicted segments (class logits + mask logits) to ground-truth segments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["HungarianMatcher", "MatchTargets", "pairwise_dice_cost", "pairwise_sigmoid_focal_cost"]


def pairwise_sigmoid_focal_cost(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, weights: Optional[Tensor] = None
) -> Tensor:
    """Mean per-pixel sigmoid focal loss of every prediction against every target, by two matrix products.

    Args:
        inputs: (..., N, P) mask logits (leading dimensions: a batch of images).
        targets: (..., M, P) binary masks (float).
        alpha: weight of positive pixels (negatives get ``1 - alpha``); ``alpha < 0`` disables the weighting.
        gamma: focusing exponent.
        weights: optional (..., P) 0/1 pixel weights; the mean is then over the pixels of weight 1.
    Returns:
        (..., N, M) costs; entry (n, m) equals ``sigmoid_focal_loss(inputs[n], targets[m]).mean()``.
    """
    prob = inputs.sigmoid()
    # BCE-with-logits against all-ones / all-zeros targets: -log(p) = softplus(-x), -log(1 - p) = softplus(x)
    focal_pos = (1 - prob) ** gamma * F.softplus(-inputs)
    focal_neg = prob**gamma * F.softplus(inputs)
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    if weights is not None:
        focal_pos = focal_pos * weights[..., None, :]
        focal_neg = focal_neg * weights[..., None, :]
    cost = focal_pos @ targets.transpose(-1, -2) + focal_neg @ (1 - targets).transpose(-1, -2)
    if weights is None:
        return cost / inputs.shape[-1]
    return cost / weights.sum(-1)[..., None, None]


def pairwise_dice_cost(inputs: Tensor, targets: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Dice loss (with +1 smoothing) of every prediction against every target.

    Args:
        inputs: (..., N, P) mask logits (leading dimensions: a batch of images).
        targets: (..., M, P) binary masks (float), zero where ``weights`` is.
        weights: optional (..., P) 0/1 pixel weights; only pixels of weight 1 count.
    Returns:
        (..., N, M) costs ``1 - (2 |p ∩ t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(inputs)``.
    """
    prob = inputs.sigmoid()
    if weights is not None:
        prob = prob * weights[..., None, :]
    numerator = 2 * (prob @ targets.transpose(-1, -2))
    denominator = prob.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass
class MatchTargets:
    """One batch's targets on the prediction grid, padded to the batch's largest segment count G.

    Built once per batch by :meth:`HungarianMatcher.prepare_targets` and shared by every decoder layer's matching.

    Attributes:
        labels: (B, G) int64 class ids (padding: 0).
        masks: (B, G, P) float32 binary masks resized (nearest) to the (h, w) grid, P = h * w (padding: 0).
        counts: the B numbers of real segments.
        size: the grid (h, w).
        pixel_weights: (B, P) float32, 1 on the pixels that enter the mask costs (``ignore_unlabeled``), or None.
    """

    labels: Tensor
    masks: Tensor
    counts: List[int]
    size: Tuple[int, int]
    pixel_weights: Optional[Tensor] = None


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

    def prepare_targets(
        self,
        targets: Sequence[Dict[str, Tensor]],
        size: Tuple[int, int],
        device: torch.device,
        use_labeled: Optional[bool] = None,
    ) -> MatchTargets:
        """Resize (nearest) and pad one batch's target masks to the prediction grid ``size`` for matching.

        Args:
            targets: B dicts with "labels": (G_b,) long and "masks": (G_b, H, W) binary; with ``use_labeled``
                also "labeled": (H, W) bool.
            size: the prediction grid (h, w).
            device: where the predictions are.
            use_labeled: restrict the mask costs to each target's "labeled" pixels (None: ``ignore_unlabeled``).
        """
        if use_labeled is None:
            use_labeled = self.ignore_unlabeled
        if use_labeled and any("labeled" not in t for t in targets):
            raise ValueError("matching on labelled pixels only needs every target's 'labeled' map")
        counts = [int(t["labels"].shape[0]) for t in targets]
        b, g = len(targets), max(counts, default=0)
        h, w = int(size[0]), int(size[1])
        labels = torch.zeros((b, g), dtype=torch.int64, device=device)
        masks = torch.zeros((b, g, h * w), dtype=torch.float32, device=device)
        for i, (t, n) in enumerate(zip(targets, counts)):
            if n:
                labels[i, :n] = t["labels"].to(device)
                tgt = t["masks"].to(device=device, dtype=torch.float32)[:, None]
                masks[i, :n] = F.interpolate(tgt, size=(h, w), mode="nearest").flatten(1)
        weights = None
        if use_labeled:
            labeled = torch.stack([t["labeled"] for t in targets]).to(device=device, dtype=torch.float32)[:, None]
            weights = F.interpolate(labeled, size=(h, w), mode="nearest").flatten(1)
            # an image whose labelled pixels all vanish in the resize (a tiny target) keeps every pixel
            weights[weights.sum(1) == 0] = 1.0
        return MatchTargets(labels, masks, counts, (h, w), weights)

    @torch.no_grad()
    def batch_costs(self, logits: Tensor | None, masks: Tensor, targets: MatchTargets) -> Tensor:
        """Matching costs of a batch, every image at once.

        Args:
            logits: (B, Q, K + 1) class logits, last column "no object"; may be ``None`` when ``cost_class`` is 0.
            masks: (B, Q, h, w) mask logits on the grid of ``targets``.
            targets: from :meth:`prepare_targets`.
        Returns:
            (B, Q, G) float32 costs; image b's real ones are ``[b, :, :targets.counts[b]]``.
        Raises:
            ValueError: a label outside [0, K), or logits missing while ``cost_class`` is non-zero.
        """
        if tuple(masks.shape[-2:]) != targets.size:
            raise ValueError(f"predictions on a {tuple(masks.shape[-2:])} grid, targets prepared for {targets.size}")
        b, q, g = masks.shape[0], masks.shape[1], targets.labels.shape[1]
        cost = masks.new_zeros((b, q, g), dtype=torch.float32)
        if g == 0:
            return cost
        if self.cost_class != 0:
            if logits is None:
                raise ValueError("the class cost needs pred_logits; build the matcher with cost_class=0 without them")
            num_classes = logits.shape[-1] - 1
            counts = torch.as_tensor(targets.counts, device=targets.labels.device)
            real = targets.labels[torch.arange(g, device=counts.device)[None, :] < counts[:, None]]
            if bool(((real < 0) | (real >= num_classes)).any()):
                raise ValueError(
                    f"target labels must lie in [0, {num_classes}) for logits over {num_classes} classes + no "
                    f"object; got labels in [{int(real.min())}, {int(real.max())}]"
                )
            prob = logits.float().softmax(-1)
            cost = cost + self.cost_class * -prob.gather(-1, targets.labels[:, None, :].expand(b, q, g))
        if self.cost_mask != 0 or self.cost_dice != 0:
            src = masks.float().flatten(2)
            tgt, weights = targets.masks, targets.pixel_weights
            if self.cost_mask != 0:
                focal = pairwise_sigmoid_focal_cost(src, tgt, self.focal_alpha, self.focal_gamma, weights)
                cost = cost + self.cost_mask * focal
            if self.cost_dice != 0:
                cost = cost + self.cost_dice * pairwise_dice_cost(src, tgt, weights)
        return cost

    def cost_matrix(
        self,
        logits: Tensor | None,
        masks: Tensor,
        labels: Tensor,
        target_masks: Tensor,
        labeled: Optional[Tensor] = None,
    ) -> Tensor:
        """Matching cost of one image (:meth:`batch_costs` of a batch of one).

        Args:
            logits: (Q, K + 1) class logits, last column "no object"; may be ``None`` when ``cost_class`` is 0.
            masks: (Q, h, w) mask logits.
            labels: (G,) target class ids in [0, K).
            target_masks: (G, H, W) binary target masks (bool or float), resized (nearest) to (h, w) here.
            labeled: optional (H, W) bool; only its True pixels (resized like the masks) enter the mask costs.
        Returns:
            (Q, G) float32 costs.
        """
        target = {"labels": labels, "masks": target_masks}
        if labeled is not None:
            target["labeled"] = labeled
        prepared = self.prepare_targets([target], masks.shape[-2:], masks.device, use_labeled=labeled is not None)
        logits = logits[None] if logits is not None else None
        return self.batch_costs(logits, masks[None], prepared)[0]

    @torch.no_grad()
    def forward(
        self,
        pred_logits: Tensor | None,
        pred_masks: Tensor,
        targets: Sequence[Dict[str, Tensor]],
        prepared: Optional[MatchTargets] = None,
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            pred_logits: (B, Q, K + 1) class logits, last column "no object"; ``None`` for class-agnostic matching.
            pred_masks: (B, Q, h, w) mask logits.
            targets: B dicts with "labels": (G,) long in [0, K) and "masks": (G, H, W) binary; G may be 0.
            prepared: ``targets`` already through :meth:`prepare_targets` for this grid (the set criterion shares
                it between decoder layers); None: prepared here.
        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length min(Q, G): query
            ``query_idx[i]`` is assigned target ``target_idx[i]``.
        Raises:
            FloatingPointError: non-finite costs (diverged predictions).
        """
        if len(targets) != pred_masks.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_masks.shape[0]} predictions")
        if prepared is None:
            prepared = self.prepare_targets(targets, pred_masks.shape[-2:], pred_masks.device)
        costs = self.batch_costs(pred_logits, pred_masks, prepared).cpu()
        indices = []
        for b, n in enumerate(prepared.counts):
            if n == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = costs[b, :, :n]
            if not torch.isfinite(cost).all():
                raise FloatingPointError(f"non-finite matching cost for image {b} of the batch: predictions diverged")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
