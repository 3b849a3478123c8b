"""Set criterion of mask classification: Hungarian matching, then class CE + sigmoid focal + dice on matched masks."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode, configurable
from detectron2.utils import comm
from fvcore.nn import sigmoid_focal_loss
from torch import Tensor, nn
from torch.nn import functional as F

from .matcher import HungarianMatcher, MatchTargets

__all__ = ["SetCriterion", "dice_loss"]


def dice_loss(inputs: Tensor, targets: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Per-mask dice loss with +1 smoothing.

    Args:
        inputs: (M, P) mask logits.
        targets: (M, P) binary masks (float).
        weights: optional (M, P) pixel weights (0/1: the pixels that count); all pixels count without it.
    Returns:
        (M,) losses ``1 - (2 |p ∩ t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(inputs)`` (times ``weights``).
    """
    prob = inputs.sigmoid()
    if weights is not None:
        prob = prob * weights
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


class SetCriterion(nn.Module):
    """MaskFormer's losses for a set of (class logits, mask logits) predictions.

    For every output (the final one and, with deep supervision, each auxiliary one) queries are matched to
    targets by the :class:`HungarianMatcher`, then

    - ``loss_ce``: cross-entropy over K + 1 classes for all queries (unmatched → the last, "no object", column,
      whose class weight is ``no_object_weight``); K is read from the logits at every call, so the vocabulary
      may change between calls;
    - ``loss_mask``: sigmoid focal loss of the matched masks, mean over pixels, summed over masks;
    - ``loss_dice``: dice loss of the matched masks, summed over masks;

    mask losses are divided by the number of target masks in the whole (distributed) batch. Predicted masks are
    upsampled (bilinear) to the target masks' size. With ``ignore_unlabeled`` the mask losses (and the matcher's
    mask costs) see only the pixels inside some target mask of their image: pixels of ignored labels (unseen
    classes in zero-shot training) and padding are neither foreground nor background for any query. MaskFormer
    (the default) counts them as background of every mask, which teaches the queries to avoid unseen regions.
    Every returned loss is already multiplied by its weight:
    the total loss is the plain sum of the returned values.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
        class_loss: bool = True,
        ignore_unlabeled: bool = False,
    ):
        """
        Args:
            matcher: assigns queries to targets.
            class_weight: weight of ``loss_ce``.
            mask_weight: weight of ``loss_mask`` (sigmoid focal).
            dice_weight: weight of ``loss_dice``.
            no_object_weight: CE class weight of the "no object" column (the other classes have weight 1).
            focal_alpha, focal_gamma: parameters of the sigmoid focal loss.
            deep_supervision: also compute the losses of ``outputs["aux_outputs"]`` (ignored otherwise).
            class_loss: compute ``loss_ce``; ``False`` for class-agnostic proposal generators (``pred_logits``
                is then not needed, provided the matcher has ``cost_class=0``).
            ignore_unlabeled: mask losses on labelled pixels only (targets need ``"labeled"``); the matcher should
                be built with the same setting.
        """
        super().__init__()
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.deep_supervision = deep_supervision
        self.class_loss = class_loss
        self.ignore_unlabeled = ignore_unlabeled

    @classmethod
    def from_config(cls, cfg: CfgNode, class_loss: bool = True):
        """``class_loss=False`` also makes the matcher class-agnostic (``cost_class=0``)."""
        crit = cfg.MODEL.CRITERION
        matcher = HungarianMatcher(cfg) if class_loss else HungarianMatcher(cfg, cost_class=0.0)
        return {
            "matcher": matcher,
            "class_weight": crit.CLASS_WEIGHT,
            "mask_weight": crit.MASK_WEIGHT,
            "dice_weight": crit.DICE_WEIGHT,
            "no_object_weight": crit.NO_OBJECT_WEIGHT,
            "focal_alpha": crit.FOCAL_ALPHA,
            "focal_gamma": crit.FOCAL_GAMMA,
            "deep_supervision": crit.DEEP_SUPERVISION,
            "class_loss": class_loss,
            "ignore_unlabeled": crit.IGNORE_UNLABELED,
        }

    def forward(self, outputs: Dict[str, object], targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """
        Args:
            outputs: a dict with
                "pred_logits": (B, Q, K + 1) class logits, last column "no object" (not needed without class loss);
                "pred_masks": (B, Q, h, w) mask logits;
                "aux_outputs" (optional): a list of L - 1 dicts with the same two keys, one per earlier decoder layer.
            targets: B dicts with "labels": (G,) long in [0, K) and "masks": (G, H, W) binary (bool or float);
                G may be 0; all images share (H, W) (masks padded to the padded batch size, like the images);
                with ``ignore_unlabeled`` also "labeled": (H, W) bool, the pixels the mask losses see.
        Returns:
            Weighted scalar losses: "loss_ce" (with class loss), "loss_mask", "loss_dice", and the same keys with
            suffix ``_0`` .. ``_{L-2}`` for the auxiliary outputs (with deep supervision).
        """
        sizes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(sizes) > 1:
            raise ValueError(f"target masks of one batch must share one (H, W) (pad them); got sizes {sorted(sizes)}")
        num_masks = self._num_masks(targets, outputs["pred_masks"].device)
        prepared: Dict[Tuple[int, int], MatchTargets] = {}  # targets on each prediction grid, for every layer
        losses = self._losses(outputs, targets, num_masks, prepared, suffix="")
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._losses(aux, targets, num_masks, prepared, suffix=f"_{i}"))
        return losses

    @staticmethod
    def _num_masks(targets: Sequence[Dict[str, Tensor]], device: torch.device) -> Tensor:
        """Average number of target masks per process (all-reduced when distributed), at least 1."""
        num = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(num)
        return (num / world_size).clamp(min=1.0)

    def _losses(
        self,
        outputs: Dict[str, Tensor],
        targets: Sequence[Dict[str, Tensor]],
        num_masks: Tensor,
        prepared: Dict[Tuple[int, int], MatchTargets],
        suffix: str,
    ) -> Dict[str, Tensor]:
        pred_logits = outputs.get("pred_logits") if self.class_loss or self.matcher.cost_class != 0 else None
        pred_masks = outputs["pred_masks"]
        size = tuple(pred_masks.shape[-2:])
        if size not in prepared:
            prepared[size] = self.matcher.prepare_targets(targets, size, pred_masks.device)
        indices = self.matcher(pred_logits, pred_masks, targets, prepared[size])
        batch_idx, query_idx = self._flat_query_indices(indices, pred_masks.device)
        losses: Dict[str, Tensor] = {}
        if self.class_loss:
            losses["loss_ce" + suffix] = self.class_weight * self._loss_ce(
                pred_logits, targets, indices, batch_idx, query_idx
            )
        loss_mask, loss_dice = self._loss_masks(pred_masks, targets, indices, batch_idx, query_idx, num_masks)
        losses["loss_mask" + suffix] = self.mask_weight * loss_mask
        losses["loss_dice" + suffix] = self.dice_weight * loss_dice
        return losses

    @staticmethod
    def _flat_query_indices(indices: List[Tuple[Tensor, Tensor]], device: torch.device) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        return batch_idx, query_idx

    def _loss_ce(
        self,
        pred_logits: Tensor,
        targets: Sequence[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
        batch_idx: Tensor,
        query_idx: Tensor,
    ) -> Tensor:
        if pred_logits is None:
            raise ValueError("the class loss needs outputs['pred_logits']; use class_loss=False without them")
        logits = pred_logits.float()
        num_classes = logits.shape[-1] - 1
        target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(logits.device)
        target_classes[batch_idx, query_idx] = matched_labels
        class_weight = logits.new_ones(num_classes + 1)
        class_weight[-1] = self.no_object_weight
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=class_weight)

    def _loss_masks(
        self,
        pred_masks: Tensor,
        targets: Sequence[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
        batch_idx: Tensor,
        query_idx: Tensor,
        num_masks: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        if query_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected when no image has a target
            return zero, zero.clone()
        src = pred_masks[batch_idx, query_idx].float()  # (M, h, w)
        tgt = torch.cat([t["masks"][tgt_idx.to(t["masks"].device)] for t, (_, tgt_idx) in zip(targets, indices)])
        tgt = tgt.to(device=src.device, dtype=src.dtype)  # (M, H, W)
        src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        src = src.flatten(1)
        tgt = tgt.flatten(1)
        focal = sigmoid_focal_loss(src, tgt, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")
        if not self.ignore_unlabeled:
            return focal.mean(1).sum() / num_masks, dice_loss(src, tgt).sum() / num_masks
        labeled = torch.stack([t["labeled"] for t in targets]).to(src.device).flatten(1)[batch_idx].to(src.dtype)
        loss_mask = ((focal * labeled).sum(1) / labeled.sum(1).clamp(min=1.0)).sum() / num_masks
        loss_dice = dice_loss(src, tgt, labeled).sum() / num_masks
        return loss_mask, loss_dice
